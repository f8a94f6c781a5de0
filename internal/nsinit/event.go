package nsinit

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// EventKind names a status event.
type EventKind string

// Status event kinds, in the order they can occur: Started, then Exited or
// Killed; or Failed alone. A warm init (-pool-fd) says Ready first, once it
// waits for its job, and Accepted once it has received it.
const (
	Ready    EventKind = "ready"
	Accepted EventKind = "accepted"
	Started  EventKind = "started"
	Exited   EventKind = "exited"
	Killed   EventKind = "killed"
	Failed   EventKind = "failed"
)

// Reasons carried by a Failed event.
const (
	ReasonNotFound      = "notfound" // exit 127
	ReasonNotExecutable = "noexec"   // exit 126
	ReasonSetup         = "setup"    // exit 125
)

// msgCleaner keeps a message on one line.
var msgCleaner = strings.NewReplacer("\n", " ", "\r", " ")

// Event is one line on the status descriptor.
type Event struct {
	Kind    EventKind
	Pid     int            // Started: the job's pid in the init's PID namespace
	Code    int            // Exited: the exit code
	Signal  syscall.Signal // Killed: the signal
	Core    bool           // Killed: a core was dumped
	Reason  string         // Failed: ReasonNotFound, ReasonNotExecutable or ReasonSetup
	Message string         // Failed: what went wrong, for a human
}

// String encodes the event as one line (without the newline).
func (e Event) String() string {
	switch e.Kind {
	case Started:
		return fmt.Sprintf("%s %d", e.Kind, e.Pid)
	case Exited:
		return fmt.Sprintf("%s %d", e.Kind, e.Code)
	case Killed:
		if e.Core {
			return fmt.Sprintf("%s %d core", e.Kind, int(e.Signal))
		}
		return fmt.Sprintf("%s %d", e.Kind, int(e.Signal))
	case Failed:
		return fmt.Sprintf("%s %s %s", e.Kind, e.Reason, msgCleaner.Replace(e.Message))
	}
	return string(e.Kind) // Ready, Accepted
}

// ParseEvent decodes one line written by the init.
func ParseEvent(line string) (Event, error) {
	line = strings.TrimRight(line, "\r\n")
	kind, rest, _ := strings.Cut(line, " ")
	e := Event{Kind: EventKind(kind)}
	bad := func() (Event, error) {
		return Event{}, fmt.Errorf("malformed init status event %q (is the init binary the same version?)", line)
	}
	switch e.Kind {
	case Ready, Accepted:
		if rest != "" {
			return bad()
		}
	case Started, Exited:
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return bad()
		}
		if e.Kind == Started {
			if n == 0 {
				return bad()
			}
			e.Pid = n
		} else {
			if n > 255 {
				return bad()
			}
			e.Code = n
		}
	case Killed:
		num, flag, _ := strings.Cut(rest, " ")
		n, err := strconv.Atoi(num)
		if err != nil || n <= 0 || n > 127 || (flag != "" && flag != "core") {
			return bad()
		}
		e.Signal, e.Core = syscall.Signal(n), flag == "core"
	case Failed:
		reason, msg, _ := strings.Cut(rest, " ")
		switch reason {
		case ReasonNotFound, ReasonNotExecutable, ReasonSetup:
		default:
			return bad()
		}
		e.Reason, e.Message = reason, msgCleaner.Replace(msg)
	default:
		return bad()
	}
	return e, nil
}
