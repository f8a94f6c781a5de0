package e2e

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// localProg is the job of TestMigrateLocalCLI: it holds argv[1] open and
// prints "tick N" every 20 ms; for every line on stdin "got LINE", except
// "close" (closes argv[1]: "closed"); on SIGINT "int" and exit 7; on EOF
// "eof" and exit 3. Each line is one write.
const localProg = `
import os, sys, select, signal, time
held = open(sys.argv[1])
def on_int(s, f):
    os.write(1, b"int\n")
    os._exit(7)
signal.signal(signal.SIGINT, on_int)
tick, buf, last = 0, b"", time.monotonic()
while True:
    try:
        r, _, _ = select.select([0], [], [], 0.02)
    except InterruptedError:
        r = []
    if r:
        d = os.read(0, 4096)
        if not d:
            os.write(1, b"eof\n")
            os._exit(3)
        buf += d
        while b"\n" in buf:
            l, buf = buf.split(b"\n", 1)
            if l == b"close":
                held.close()
                os.write(1, b"closed\n")
            else:
                os.write(1, b"got " + l + b"\n")
    if time.monotonic() - last >= 0.02:
        last = time.monotonic()
        tick += 1
        os.write(1, b"tick %d\n" % tick)
`

// An attached job whose CLI runs on the job's own node (onnode 2 typed on
// node 2, with the test's own pipes as its stdio, which the CLI passes to
// its daemon) moves like one started from elsewhere. A first move fails
// (the job holds a file only node 2 has): it goes on on node 2 with its
// stream intact. Then it moves to node 3 and on to node 1 while lines are
// typed: its output goes on with no tick lost or repeated, every line
// typed (before, during and after each move) reaches it once and in
// order, a SIGINT to onnode after the moves reaches it once, and onnode
// exits with the job's status.
func TestMigrateLocalCLI(t *testing.T) { migrateLocalCLI(t, false) }

// The same with SSI_STREAM_STDIO set: the CLI streams its stdio instead of
// passing it, and node 2 relays the stream through a stream to itself
// from the start (localmove.go).
func TestMigrateLocalCLIStreamed(t *testing.T) { migrateLocalCLI(t, true) }

func migrateLocalCLI(t *testing.T, streamed bool) {
	c := migrateCluster(t)
	_, prog, private := progAndPrivateDir(t, c, "localprog.py", localProg)
	marker := fmt.Sprintf("ssi-localcli-%d", rand.IntN(1<<30))
	cmd := c.cliCmd(2, "onnode", "2", "/usr/bin/python3", prog, private+"/f", marker)
	if streamed {
		cmd.Env = append(cmd.Env, "SSI_STREAM_STDIO=1")
	}
	stdin, out, errb, waited := startAttached(t, cmd)
	var err error
	var sent []string
	typeLine := func(l string) {
		t.Helper()
		if _, err := io.WriteString(stdin, l+"\n"); err != nil {
			t.Fatalf("writing %q to onnode: %v", l, err)
		}
		sent = append(sent, l)
	}
	answered := func(want string) {
		t.Helper()
		Eventually(t, 15*time.Second, func() string {
			if !strings.Contains("\n"+out.String(), "\n"+want+"\n") {
				return fmt.Sprintf("the job has not printed %q yet; stderr %q; last output %q", want, errb.String(), tail(out.String()))
			}
			return ""
		})
	}
	ticking := func() {
		t.Helper()
		n := strings.Count(out.String(), "tick ")
		Eventually(t, 15*time.Second, func() string {
			if m := strings.Count(out.String(), "tick "); m < n+5 {
				return fmt.Sprintf("the job does not go on: %d ticks, %d before", m, n)
			}
			return ""
		})
	}
	typeLine("a1")
	answered("got a1")
	cpid := cpidOf(t, c, marker)
	where := func(want string) {
		t.Helper()
		if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != want {
			t.Errorf("where_pid %s: %q, want %s", cpid, got, want)
		}
	}
	// typing types lines while a move runs.
	typing := func(prefix string) func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range 20 {
				if _, err := fmt.Fprintf(stdin, "%s%d\n", prefix, i); err != nil {
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		return func() {
			<-done
			for i := range 20 {
				sent = append(sent, fmt.Sprintf("%s%d", prefix, i))
			}
		}
	}

	// A move that fails leaves it running here, its stream intact.
	wait := typing("f")
	r := c.CLI(1, "migrate", cpid, "3")
	wait()
	if r.Code != 1 || !strings.Contains(r.Stderr, "restoring process") {
		t.Errorf("migrate to node 3 while it holds a file only node 2 has: %v; want exit 1 and the restore's failure", r)
	}
	where("2")
	typeLine("a2")
	answered("got a2")
	ticking()
	typeLine("close")
	answered("closed")

	// To node 3, then on to node 1: lines typed during and after each move.
	for _, to := range []string{"3", "1"} {
		wait = typing("m" + to + "-")
		c.MustCLI(1, "migrate", cpid, to)
		wait()
		where(to)
		typeLine("after" + to)
		answered("got after" + to)
		ticking()
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-waited:
		waited <- err
	case <-time.After(30 * time.Second):
		t.Fatalf("onnode did not end 30s after SIGINT; output so far: %q", tail(out.String()))
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("onnode: %v, stderr %q; want the job's exit status 7", err, errb.String())
	}

	// Every tick once and in order, every line typed once and in order,
	// "int" once and last.
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	tick, ints := 0, 0
	var got []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "tick "):
			n, err := strconv.Atoi(strings.TrimPrefix(l, "tick "))
			if err != nil || n != tick+1 {
				t.Errorf("after tick %d: %q (a tick lost or repeated)", tick, l)
			}
			tick = n
		case strings.HasPrefix(l, "got "):
			got = append(got, strings.TrimPrefix(l, "got "))
		case l == "int":
			ints++
		case l == "closed":
			got = append(got, "close")
		default:
			t.Errorf("unexpected output line %q", l)
		}
	}
	if strings.Join(got, ",") != strings.Join(sent, ",") {
		t.Errorf("the job got the lines\n%v\nwant\n%v", got, sent)
	}
	if ints != 1 || lines[len(lines)-1] != "int" {
		t.Errorf("SIGINT seen %d times, last line %q; want once, last", ints, lines[len(lines)-1])
	}
	if tick < 30 {
		t.Errorf("only %d ticks", tick)
	}
}

// tail is the end of s, for messages.
func tail(s string) string {
	if len(s) > 300 {
		return "…" + s[len(s)-300:]
	}
	return s
}
