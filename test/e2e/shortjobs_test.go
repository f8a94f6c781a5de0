package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Many short jobs in a row, migratable, pinned and local: every one exits 0,
// and no daemon crashes or logs a panic. (A stdin acknowledgement sent
// after the exec handler had returned once made net/http panic and took
// the target daemon down after a few dozen jobs.)
func TestManyShortJobsLeaveTheDaemonsRunning(t *testing.T) {
	c := StartCluster(t, 3)
	pids := map[int]int{1: c.PID(1), 2: c.PID(2)}
	for i := 0; i < 40; i++ {
		for _, args := range [][]string{{"2", "true"}, {"-p", "2", "true"}, {"1", "true"}, {"2", "sh", "-c", "echo x"}} {
			if r := c.CLI(1, "onnode", args...); r.Code != 0 {
				t.Fatalf("run %d: onnode %s: %v", i, strings.Join(args, " "), r)
			}
		}
	}
	for k, pid := range pids {
		if c.PID(k) != pid {
			t.Errorf("node %d's daemon restarted", k)
		}
		b, err := os.ReadFile(filepath.Join(c.Dir, "node"+string(rune('0'+k)), "ssi.log"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "panic:") {
			t.Errorf("node %d's daemon panicked:\n%s", k, b)
		}
	}
	for _, k := range []int{1, 2} {
		if r := c.CLI(k, "cluster"); r.Code != 0 || !strings.Contains(r.Stdout, "1 2 3") {
			t.Errorf("node %d after the jobs: %v", k, r)
		}
	}
}
