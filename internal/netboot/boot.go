package netboot

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
)

// Failure is a boot step that failed: what, why, and what to check. The
// boot flow prints it at the rescue message.
type Failure struct {
	Step string
	Err  error
	Hint string
}

func (f *Failure) Error() string { return f.Step + ": " + f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// Console writes the boot flow's lines: each with the time since the
// kernel started (the kernel's own clock, as its messages show it).
type Console struct {
	W      io.Writer
	Uptime func() time.Duration
}

func (c *Console) Printf(format string, a ...any) {
	up := c.Uptime()
	fmt.Fprintf(c.W, "[%8.3f] ssi-boot: %s\n", up.Seconds(), fmt.Sprintf(format, a...))
}

// Step runs f as the boot step name, logging its start, end and duration;
// a failure becomes a *Failure with hint (f may return a *Failure of its
// own with a better hint).
func (c *Console) Step(name, hint string, f func() error) error {
	start := time.Now()
	c.Printf("%s ...", name)
	err := f()
	d := time.Since(start).Round(time.Millisecond)
	if err != nil {
		c.Printf("%s: FAILED after %v: %v", name, d, err)
		var fl *Failure
		if errors.As(err, &fl) {
			return fl
		}
		return &Failure{Step: name, Err: err, Hint: hint}
	}
	c.Printf("%s: ok (%v)", name, d)
	return nil
}

// Console markers, for whoever watches a guest's console (ssi vm, tests).
const (
	RescueMarker   = "*** ssi-boot: RESCUE:"
	HandoverMarker = "ssi-boot: handing over to "
)

// RescueText is what the console shows when the boot cannot go on.
func RescueText(err error) string {
	var b strings.Builder
	b.WriteString("\n" + RescueMarker + " this node could not boot into the cluster ***\n")
	var fl *Failure
	if errors.As(err, &fl) {
		fmt.Fprintf(&b, "failed step: %s\nreason:      %v\n", fl.Step, fl.Err)
		if fl.Hint != "" {
			fmt.Fprintf(&b, "check:       %s\n", fl.Hint)
		}
	} else {
		fmt.Fprintf(&b, "reason: %v\n", err)
	}
	b.WriteString("The node waits here (no kernel panic). Fix the cause, then reboot the guest.\n")
	return b.String()
}

// joinHint explains a refused or failed join.
func joinHint(server string, err error) string {
	switch connect.CodeOf(err) {
	case connect.CodePermissionDenied, connect.CodeUnauthenticated:
		return "the cluster refused the join token: tokens are used once and expire (--token-ttl); on a member, issue a fresh one with 'ssi token NODE' or 'ssi xen-config NODE --with-token --write', and boot again"
	case connect.CodeNotFound, connect.CodeFailedPrecondition, connect.CodeAlreadyExists, connect.CodeInvalidArgument:
		return "the cluster refused this machine: is its MAC the one registered for the token (ssi-addnode --hwaddr, clustertab)?"
	}
	if strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "tls") {
		return "the member at " + server + " is not of the token's cluster (its CA does not match): check ssi.server= and ssi.token="
	}
	return "cannot reach the cluster at " + server + ": is that node's daemon running and listening there (ssi.server= on the kernel command line), and does this network reach it?"
}
