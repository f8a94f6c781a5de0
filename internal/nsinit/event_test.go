package nsinit

import (
	"syscall"
	"testing"
)

func TestEventRoundTrip(t *testing.T) {
	for _, e := range []Event{
		{Kind: Started, Pid: 2},
		{Kind: Exited, Code: 0},
		{Kind: Exited, Code: 255},
		{Kind: Killed, Signal: syscall.SIGTERM},
		{Kind: Killed, Signal: syscall.SIGSEGV, Core: true},
		{Kind: Failed, Reason: ReasonNotFound, Message: "foo: command not found"},
		{Kind: Failed, Reason: ReasonSetup, Message: ""},
	} {
		got, err := ParseEvent(e.String() + "\n")
		if err != nil {
			t.Errorf("ParseEvent(%q): %v", e.String(), err)
			continue
		}
		if got != e {
			t.Errorf("round trip of %q: got %+v, want %+v", e.String(), got, e)
		}
	}
	multi := Event{Kind: Failed, Reason: ReasonSetup, Message: "line1\nline2"}
	if got, err := ParseEvent(multi.String()); err != nil || got.Message != "line1 line2" {
		t.Errorf("multi-line message: %+v, %v", got, err)
	}
}

func TestParseEventRejects(t *testing.T) {
	for _, s := range []string{"", "started", "started 0", "started -1", "started x", "exited 256", "exited -1",
		"killed 0", "killed 9 dump", "killed 200", "failed", "failed why msg", "bogus 1", "started 1 2"} {
		if e, err := ParseEvent(s); err == nil {
			t.Errorf("ParseEvent(%q) = %+v, want an error", s, e)
		}
	}
}

func FuzzParseEvent(f *testing.F) {
	for _, s := range []string{"started 2", "exited 3", "killed 15 core", "failed notfound x: command not found"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEvent(s)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip unchanged.
		again, err := ParseEvent(e.String())
		if err != nil || again != e {
			t.Fatalf("%q parsed as %+v, which re-encodes as %q and parses as %+v, %v", s, e, e.String(), again, err)
		}
	})
}
