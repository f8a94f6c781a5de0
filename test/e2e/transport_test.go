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

// When the CLI's own daemon dies mid-call, the CLI exits 255 (ssi failed),
// never 1, and says which connection was lost and during what.
func TestLostDaemonExits255(t *testing.T) {
	c := StartCluster(t, 2)
	detached := strings.TrimSpace(c.MustCLI(2, "ssi", "run", "-d", "-n", "2", "sleep", "60"))

	onnode := c.cliCmd(1, "onnode", "2", "sleep", "30")
	var onnodeErr syncBuffer
	onnode.Stderr = &onnodeErr
	if err := onnode.Start(); err != nil {
		t.Fatal(err)
	}
	defer onnode.Process.Kill()
	waiter := c.cliCmd(1, "ssi", "wait", detached)
	var waiterErr syncBuffer
	waiter.Stderr = &waiterErr
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	defer waiter.Process.Kill()

	waitForJob(t, c, 2, "sleep 30")               // onnode's job runs: its stream is up
	Eventually(t, 10*time.Second, func() string { // ssi wait has connected to node 1
		if !hasSocket(waiter.Process.Pid) {
			return "ssi wait has no connection to its daemon yet"
		}
		return ""
	})
	c.Kill(1)

	sock := c.Socket(1)
	for _, tc := range []struct {
		name string
		cmd  *exec.Cmd
		err  *syncBuffer
		want string
	}{
		{"onnode 2 sleep 30", onnode, &onnodeErr, "lost the connection to the ssi daemon at " + sock},
		{"ssi wait " + detached, waiter, &waiterErr, "lost the connection to the ssi daemon at " + sock + " during Wait"},
	} {
		done := make(chan error, 1)
		go func() { done <- tc.cmd.Wait() }()
		select {
		case err := <-done:
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != 255 || !strings.Contains(tc.err.String(), tc.want) {
				t.Errorf("%s after its daemon died: exit %d, stderr %q; want 255 and %q", tc.name, code, tc.err.String(), tc.want)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s hangs after its daemon died (stderr %q)", tc.name, tc.err.String())
		}
	}

	// Where no daemon listens (a dead daemon's socket file, or no file at
	// all), every command exits 255 and says what to do.
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, s := range []string{sock, missing} {
		for _, args := range [][]string{{"cluster", "-V"}, {"onnode", "2", "true"}, {"ssi", "wait", detached}, {"ssi", "kill", detached}} {
			r := run(t, []string{"SSI_SOCKET=" + s}, "", args[0], args[1:]...)
			if r.Code != 255 || !strings.Contains(r.Stderr, "no ssi daemon is listening on "+s) {
				t.Errorf("%v with no daemon on %s: %v", args, s, r)
			}
		}
	}
}

// hasSocket reports whether process pid holds a socket: a Go CLI opens
// none before it dials its daemon.
func hasSocket(pid int) bool {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:") {
			return true
		}
	}
	return false
}
