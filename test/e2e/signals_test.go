package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A signal the CLI receives reaches the remote job at once, even when the
// job does not read its input and the CLI's stdin keeps the exec stream
// full (yes | onnode 2 CMD, then Ctrl-C).
func TestSignalOvertakesSaturatedStdin(t *testing.T) {
	c := StartCluster(t, 2)
	cmd := c.cliCmd(1, "onnode", "2", "sh", "-c", `trap "echo got INT; exit 7" INT; echo ready; sleep 60`)
	stdin, feed, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = stdin
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	defer cmd.Process.Kill()

	// An endless stream, like yes: it stops only when the CLI is gone.
	var fed atomic.Int64
	go func() {
		defer feed.Close()
		block := bytes.Repeat([]byte("y\n"), 32<<10)
		for {
			n, err := feed.Write(block)
			fed.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "ready" {
			t.Fatalf("first line %q, want ready (stderr %q)", l, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the job never started (stderr %q)", stderr.String())
	}
	// Wait until stdin is saturated: every buffer between here and the job
	// is full, so the feeder has stopped making progress.
	var last int64
	var since time.Time
	Eventually(t, 30*time.Second, func() string {
		n := fed.Load()
		if n != last || since.IsZero() {
			last, since = n, time.Now()
		}
		if n < 1<<20 || time.Since(since) < 500*time.Millisecond {
			return fmt.Sprintf("stdin is still flowing: %d bytes fed", n)
		}
		return ""
	})
	t.Logf("stdin saturated after %d bytes", last)

	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var out []string
	done := make(chan error, 1)
	go func() {
		for l := range lines {
			out = append(out, l)
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err == nil {
			code = 0
		}
		if code != 7 || !strings.Contains(strings.Join(out, "\n"), "got INT") {
			t.Errorf("after SIGINT the client exited %d with output %q, want 7 and \"got INT\" (stderr %q)", code, out, stderr.String())
		}
		t.Logf("the job ended %v after SIGINT", time.Since(sent))
	case <-time.After(10 * time.Second):
		t.Fatalf("SIGINT did not reach the job within 10s while stdin was saturated (stderr %q)", stderr.String())
	}
}
