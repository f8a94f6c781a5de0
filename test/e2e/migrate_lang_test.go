package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// counterC is counter's C version: 0, 1, 2, ... every 20 ms until the
// file argv[1] exists, then "end", exit 3.
const counterC = `#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
	for (long i = 0; access(argv[1], F_OK) != 0; i++) {
		printf("%ld\n", i);
		fflush(stdout);
		usleep(20000);
	}
	printf("end\n");
	return 3;
}
`

// counterVfork is counterC running a command between two lines the way
// dash runs each one: vfork, then exec in the child (which first waits
// 15 ms, so that a freeze often lands between the two).
const counterVfork = `#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
	for (long i = 0; access(argv[1], F_OK) != 0; i++) {
		printf("%ld\n", i);
		fflush(stdout);
		pid_t p = vfork();
		if (p == 0) {
			usleep(15000);
			execl("/bin/true", "true", (char *)0);
			_exit(127);
		}
		waitpid(p, 0, 0);
		usleep(5000);
	}
	printf("end\n");
	return 3;
}
`

// counterPy is the same in Python.
const counterPy = `import os, sys, time
i = 0
while not os.path.exists(sys.argv[1]):
    print(i, flush=True)
    i += 1
    time.sleep(0.02)
print("end", flush=True)
sys.exit(3)
`

// A C program, one that vforks a command between two lines (most of the
// time between vfork and exec: the freeze must wait that out, or CRIU
// cannot seize the parent), a Python loop and a multi-threaded Go program
// (four workers on threads of their own, test/migratee) each move from
// node 2 to node 3 and back home mid-run, and carry on exactly: no line lost or
// repeated, their own exit status at the end (the Go program's says its
// workers' counters never skipped or repeated a step).
func TestMigrateLanguages(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cprog, vprog, pyprog, goprog := filepath.Join(dir, "counter-c"), filepath.Join(dir, "counter-vfork"), filepath.Join(dir, "counter.py"), filepath.Join(dir, "migratee")
	for prog, src := range map[string]string{cprog: counterC, vprog: counterVfork} {
		if err := os.WriteFile(prog+".c", []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cc", "-O2", "-o", prog, prog+".c").CombinedOutput(); err != nil {
			t.Fatalf("compile %s (scripts/deps.sh installs gcc): %v\n%s", prog, err, out)
		}
	}
	if err := os.WriteFile(pyprog, []byte(counterPy), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("go", "build", "-o", goprog, "../migratee").CombinedOutput(); err != nil {
		t.Fatalf("build test/migratee: %v\n%s", err, out)
	}
	c := migrateCluster(t)
	for _, p := range []struct {
		name string
		argv []string
	}{
		{"C", []string{cprog}},
		{"C, vforking", []string{vprog}},
		{"Python", []string{"/usr/bin/python3", pyprog}},
		{"Go, 4 threads", []string{goprog}},
	} {
		t.Run(p.name, func(t *testing.T) {
			stop := stopFile(t)
			args := append([]string{"run", "-d", "-n", "2"}, p.argv...)
			cpid := strings.TrimSpace(c.MustCLI(1, "ssi", append(args, stop)...))
			progress := func(where string, after int) int {
				t.Helper()
				var n int
				Eventually(t, 15*time.Second, func() string {
					n = len(logLines(c, 1, cpid))
					if n <= after+10 {
						return fmt.Sprintf("%s: %d lines (%d before)", where, n, after)
					}
					return ""
				})
				return n
			}
			n := progress("before the move", 0)
			if out := c.MustCLI(1, "migrate", cpid, "3"); !strings.Contains(out, "from node 2 to node 3") {
				t.Errorf("migrate printed %q", out)
			}
			if got := strings.TrimSpace(c.MustCLI(2, "where_pid", cpid)); got != "3" {
				t.Errorf("where_pid after the move: %q", got)
			}
			n = progress("on node 3", n)
			if out := c.MustCLI(1, "migrate", cpid, "home"); !strings.Contains(out, "from node 3 to node 2") {
				t.Errorf("migrate home printed %q", out)
			}
			n = progress("back home", n)
			stopNow(t, stop)
			counted(t, c, cpid, n)
			if r := c.CLI(1, "ssi", "wait", cpid); r.Code != 3 {
				t.Errorf("ssi wait: %v; want the program's own exit status 3", r)
			}
			// CRIU dumped it at the first try: the freeze had waited out
			// any vfork (a second try after CRIU's 10 s would hide that).
			for _, k := range []int{2, 3} {
				b, err := os.ReadFile(filepath.Join(c.Dir, fmt.Sprintf("node%d", k), "ssi.log"))
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range strings.Split(string(b), "\n") {
					if strings.Contains(l, "CRIU could not dump") && strings.Contains(l, "cpid="+cpid+" ") {
						t.Errorf("node %d: %s", k, l)
					}
				}
			}
		})
	}
}
