package rexec

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestNet: a job with Net gets a network namespace of its own (not the
// daemon's), set up by Net, called with the init's PID before the command
// runs, even with a pool of ready inits (which have the node's network);
// an error of Net fails the start.
func TestNet(t *testing.T) {
	needRoot(t)
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []mode{modes[3], modes[4]} {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "sh", "-c", "cat /proc/self/net/dev | wc -l; readlink /proc/self/ns/net")
			var called []int
			var initNS string
			spec.Net = func(pid int) error {
				called = append(called, pid)
				initNS, _ = os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
				return nil
			}
			j, err := Start(t.Context(), spec) // not start: with a pool it checks the job came from it
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			if j.warm {
				t.Errorf("a job with Net came from the pool")
			}
			c := collect(j)
			st := wait(t, j)
			c.done(t)
			lines := strings.Fields(c.out.String())
			if st.ExitCode() != 0 || len(lines) != 2 {
				t.Fatalf("status %v, output %q %q", st, c.out.String(), c.err.String())
			}
			if len(called) != 1 || called[0] != j.InitPid() {
				t.Errorf("Net called with %v, want once with the init %d", called, j.InitPid())
			}
			if lines[1] == own || initNS != lines[1] {
				t.Errorf("the job's network namespace %s (its init's %s), the daemon's %s: want the init's own", lines[1], initNS, own)
			}
			if lines[0] != "3" { // two heading lines and lo: nothing of the node's
				t.Errorf("the job sees %s lines of /proc/net/dev, want lo only", lines[0])
			}
		})
	}
	spec := modes[3].spec(t, "true")
	spec.Net = func(int) error { return errors.New("no address for you") }
	if _, err := Start(t.Context(), spec); err == nil || !strings.Contains(err.Error(), "no address for you") {
		t.Errorf("a failing Net: %v, want its error", err)
	}
}
