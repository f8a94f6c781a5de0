package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// ttyProg is the job of TestMigrateTerminal: it puts its terminal in
// cbreak mode (every key read at once, no echo by the terminal, ^C still
// a signal), prints "tick N" every 20 ms, and for every key "key N 'c'"
// (q: "bye", exit 7; p: "pause", and it reads no key until the file
// argv[1] exists, then "resume"), for every SIGWINCH "winch ROWS COLS",
// for every SIGINT "int N". Each line is one write.
const ttyProg = `
import os, sys, select, signal, termios, tty, fcntl, struct, time
def size():
    r, c = struct.unpack("hh", fcntl.ioctl(1, termios.TIOCGWINSZ, b"1234"))
    return r, c
def say(s):
    os.write(1, (s + "\n").encode())
events = []
signal.signal(signal.SIGWINCH, lambda s, f: events.append("winch %d %d" % size()))
ints = [0]
def on_int(s, f):
    ints[0] += 1
    events.append("int %d" % ints[0])
signal.signal(signal.SIGINT, on_int)
tty.setcbreak(0)
say("ready %d %d" % size())
tick, keys, last, paused = 0, 0, time.monotonic(), False
while True:
    if paused and os.path.exists(sys.argv[1]):
        paused = False
        say("resume")
    try:
        r, _, _ = select.select([] if paused else [0], [], [], 0.02)
    except InterruptedError:
        r = []
    while events:
        say(events.pop(0))
    if r:
        c = os.read(0, 1).decode()
        if c == "q":
            say("bye")
            sys.exit(7)
        if c == "p":
            paused = True
            say("pause")
            continue
        keys += 1
        say("key %d %r" % (keys, c))
    if time.monotonic() - last >= 0.02:
        last = time.monotonic()
        tick += 1
        say("tick %d" % tick)
`

// A terminal session survives a move: onnode -t on a terminal of the
// test's own, the job on node 2 in cbreak mode, migrated to node 3 while
// it prints: its output goes on with no tick lost or repeated, keys typed
// before the move that it had not read yet (it had stopped reading) and
// keys typed during the move reach it once each and in order, unechoed, a
// key typed during the second move as well, a key typed after the
// move reaches it at once and unechoed (its terminal
// settings moved with it), a resize after the move reaches it as
// SIGWINCH with the new size, ^C after the move is a SIGINT from its
// terminal; all of it again after a second move, back to node 2; and
// onnode exits with the job's status.
func TestMigrateTerminal(t *testing.T) {
	c := migrateCluster(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "ttyprog.py")
	if err := os.WriteFile(prog, []byte(ttyProg), 0o644); err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("ssi-tty-%d", rand.IntN(1<<30))
	resume := filepath.Join(dir, "resume")
	cmd := c.cliCmd(1, "onnode", "-t", "2", "/usr/bin/python3", prog, resume, marker)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-waited })

	lines := make(chan string, 4096)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(ptmx)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
	}()
	var all []string
	lastTick := 0
	expect := func(want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the session ended before %q; it printed:\n%s", want, strings.Join(all, "\n"))
				}
				all = append(all, l)
				if n, ok := strings.CutPrefix(l, "tick "); ok {
					lastTick, _ = strconv.Atoi(n)
				}
				if l == want || want == "" {
					return
				}
			case <-deadline:
				t.Fatalf("no %q; the session printed:\n%s", want, strings.Join(all, "\n"))
			}
		}
	}
	ticksPast := func(n int) {
		t.Helper()
		for from := lastTick; lastTick < from+n; {
			expect("")
		}
	}
	expect("ready 24 80")
	ticksPast(5)
	ptmx.Write([]byte("a"))
	expect("key 1 'a'")

	cpid := ""
	for _, l := range strings.Split(c.MustCLI(1, "ssi", "ps"), "\n") {
		if strings.Contains(l, marker) && !strings.Contains(l, `\_`) {
			cpid = strings.Fields(l)[0]
		}
	}
	if cpid == "" {
		t.Fatalf("the job is not in ps:\n%s", c.MustCLI(1, "ssi", "ps"))
	}
	// typeDuring types keys while fn runs (a move).
	typeDuring := func(keys string, fn func()) {
		typed := make(chan struct{})
		go func() {
			defer close(typed)
			for _, k := range keys {
				ptmx.Write([]byte(string(k)))
				time.Sleep(15 * time.Millisecond)
			}
		}()
		fn()
		<-typed
	}
	// Keys it has not read when it is frozen are in its old terminal:
	// they move with it; so do those typed while it moves (in the old
	// terminal, or kept by the client's daemon and sent again).
	ptmx.Write([]byte("p"))
	expect("pause")
	ptmx.Write([]byte("xyz"))
	time.Sleep(200 * time.Millisecond)
	typeDuring("0123456789", func() { c.MustCLI(1, "migrate", cpid, "3") })
	if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != "3" {
		t.Fatalf("where_pid after the move: %q", got)
	}
	if err := os.WriteFile(resume, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	expect("resume")
	expect("key 14 '9'")
	ticksPast(5)
	ptmx.Write([]byte("b"))
	expect("key 15 'b'")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	expect("winch 30 100")
	ptmx.Write([]byte{3}) // ^C
	expect("int 1")
	ticksPast(3)
	// And back home, typing while it moves: the terminal it got on node 3
	// moves the same way.
	typeDuring("abcdefghij", func() { c.MustCLI(3, "migrate", cpid, "home") })
	if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != "2" {
		t.Fatalf("where_pid after the move home: %q", got)
	}
	ptmx.Write([]byte("c"))
	expect("key 26 'c'")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	expect("winch 40 120")
	ticksPast(3)
	ptmx.Write([]byte("q"))
	expect("bye")
	select {
	case err = <-waited:
		waited <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("onnode did not end 30s after the job said bye")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("onnode: %v; want the job's exit status 7", err)
	}
	// Exactly: every tick once and in order, and the events once each.
	tick := 0
	var events []string
	for _, l := range all {
		if n, ok := strings.CutPrefix(l, "tick "); ok {
			if tick++; n != strconv.Itoa(tick) {
				t.Fatalf("tick %s where tick %d was due; the session printed:\n%s", n, tick, strings.Join(all, "\n"))
			}
			continue
		}
		events = append(events, l)
	}
	want := []string{"ready 24 80", "key 1 'a'", "pause", "resume"}
	keys := func(from int, ks string) {
		for i, k := range ks {
			want = append(want, fmt.Sprintf("key %d '%c'", from+i, k))
		}
	}
	keys(2, "xyz0123456789")
	want = append(want, "key 15 'b'", "winch 30 100", "int 1")
	keys(16, "abcdefghij")
	want = append(want, "key 26 'c'", "winch 40 120", "bye")
	if strings.Join(events, "|") != strings.Join(want, "|") {
		t.Errorf("the job printed %q besides its ticks, want %q", events, want)
	}
}
