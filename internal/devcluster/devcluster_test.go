package devcluster

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// A PID file left by a daemon that was killed may name a process that has
// since taken the same PID: ssi down must leave it alone.
func TestDownLeavesStrangersAlone(t *testing.T) {
	dir := t.TempDir()
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command("/bin/sh", append([]string{"-c", "sleep 60; true"}, args...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	stranger := start("unrelated")
	daemon := start("daemon", "--data-dir", NodeDir(dir, 2))
	for k, cmd := range map[int]*exec.Cmd{1: stranger, 2: daemon} {
		os.MkdirAll(NodeDir(dir, k), 0o755)
		os.WriteFile(PIDFile(dir, k), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	}
	if _, ok := PID(dir, 1); ok {
		t.Fatal("a process that is not node 1's daemon counts as its daemon")
	}
	if _, ok := PID(dir, 2); !ok {
		t.Fatal("node 2's daemon (by its command line) is not recognised")
	}
	stopped, err := Down(dir, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(stopped) != 1 || stopped[0] != 2 {
		t.Errorf("stopped %v, want [2]", stopped)
	}
	if err := stranger.Process.Signal(syscall.Signal(0)); err != nil || zombie(stranger.Process.Pid) {
		t.Errorf("ssi down killed a process that was not a daemon: %v", err)
	}
}
