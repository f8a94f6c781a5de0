// Package udhcpctest drives busybox udhcpc, a real DHCP client nobody here
// wrote, for the DHCP tests: a hook script that records every event udhcpc
// reports (with the variables it passes) and configures the address so
// that renewals can be unicast, and a reader for those records. Test
// support only.
package udhcpctest

import (
	"fmt"
	"os"
	"strings"
)

const script = `#!/bin/sh
{
  echo "event=$1"
  for v in ip subnet mask router dns domain hostname lease serverid broadcast message; do
    eval "echo $v=\${$v}"
  done
  echo ---
} >> %q
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
`

// WriteScript writes the hook script (udhcpc -s PATH) to path; it appends
// its records to events.
func WriteScript(path, events string) error {
	if err := os.WriteFile(path, []byte(fmt.Sprintf(script, events)), 0o755); err != nil {
		return fmt.Errorf("write udhcpc script: %w", err)
	}
	return nil
}

// Event is one record: "event" (bound, renew, nak, deconfig, leasefail...)
// and the variables udhcpc set.
type Event map[string]string

// ReadEvents parses the records written so far (none if the file does not
// exist yet).
func ReadEvents(path string) ([]Event, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read udhcpc events: %w", err)
	}
	var out []Event
	cur := Event{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "---" {
			out = append(out, cur)
			cur = Event{}
		} else if k, v, ok := strings.Cut(line, "="); ok {
			cur[k] = v
		}
	}
	return out, nil
}

// LastBound is the last "bound" event, or nil.
func LastBound(evs []Event) Event {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i]["event"] == "bound" {
			return evs[i]
		}
	}
	return nil
}
