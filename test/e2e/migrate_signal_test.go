package e2e

import (
	"strings"
	"testing"
	"time"
)

// A signal sent to a detached job while it moves reaches the job where the
// move leaves it. Without that, a SIGTERM that arrived at the source after
// CRIU's dump went to the frozen copy that ends at the commit, and the job
// ran on at the target as if never signalled. A 400 MiB job moves 2 -> 3,
// pre-copy (frozen ~1 s while its memory crosses) and post-copy (the source
// serves its pages after the commit), and is sent SIGTERM mid-move: the
// move ends either way, and the job dies of the signal.
func TestSignalDuringAMove(t *testing.T) {
	needPipeMaxSize(t)
	c := migrateCluster(t)
	bin, check, stop := memsumJob(t)
	for _, how := range []string{"--precopy", "--postcopy"} {
		t.Run(how, func(t *testing.T) {
			cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", bin, "400", check, stop))
			progress(t, c, cpid, 5)
			moved := make(chan result, 1)
			go func() { moved <- c.CLI(1, "migrate", how, cpid, "3") }()
			// The move's own checks and CRIU's start take ~0.1 s, its
			// dump ~0.3 s; the memory's crossing takes about a second.
			time.Sleep(600 * time.Millisecond)
			t0 := time.Now()
			kill := c.CLI(1, "ssi", "kill", "-TERM", cpid)
			t.Logf("ssi kill took %v: %v", time.Since(t0).Round(time.Millisecond), kill)
			m := <-moved
			t.Logf("migrate: %v %s", m, strings.TrimSpace(m.Stdout))
			if kill.Code != 0 {
				t.Errorf("ssi kill -TERM %s during the move: %v", cpid, kill)
			}
			waited := make(chan result, 1)
			go func() { waited <- c.CLI(1, "ssi", "wait", cpid) }()
			select {
			case r := <-waited:
				if r.Code != 143 {
					t.Errorf("ssi wait %s: %v; want 143 (SIGTERM)", cpid, r)
				}
			case <-time.After(30 * time.Second):
				where := c.CLI(1, "where_pid", cpid)
				t.Fatalf("the job still runs 30 s after the SIGTERM sent during its move (where_pid: %v)", where)
			}
		})
	}
}
