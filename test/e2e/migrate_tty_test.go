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

// ttyProg is the job of TestMigrateTerminal: it holds argv[2] open, puts
// its terminal in cbreak mode (every key read at once, no echo by the
// terminal, ^C still a signal), prints "tick N" every 20 ms, and for
// every key "key N 'c'", except q ("bye", exit 7), f (closes argv[2]:
// "closed") and p ("pause": it reads no key until the file argv[1]
// exists, then removes it: "resume"); for every SIGWINCH "winch ROWS
// COLS", for every SIGINT "int N". Each line is one write.
const ttyProg = `
import os, sys, select, signal, termios, tty, fcntl, struct, time
held = open(sys.argv[2])
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
        os.unlink(sys.argv[1])
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
        elif c == "f":
            held.close()
            say("closed")
        elif c == "p":
            paused = True
            say("pause")
        else:
            keys += 1
            say("key %d %r" % (keys, c))
    if time.monotonic() - last >= 0.02:
        last = time.monotonic()
        tick += 1
        say("tick %d" % tick)
`

// A terminal session survives moves: onnode -t on a terminal of the
// test's own, the job on node 2 in cbreak mode. A first move fails (the
// job holds a file only node 2 has): it goes on on node 2, its terminal
// working, and the keys typed before and during the attempt that it had
// not read yet (it had stopped reading) reach it. Then it moves to node 3
// and back home while it prints: its output goes on with no tick lost or
// repeated, keys it had not read when frozen and keys typed during each
// move reach it once each, in order and unechoed (its cbreak settings
// moved with it), a resize after each move reaches it as SIGWINCH with
// the new size, ^C after the move is a SIGINT from its terminal, and
// onnode exits with the job's status.
func TestMigrateTerminal(t *testing.T) { migrateTerminal(t, 1) }

// The same with onnode typed on node 2, the job's own node: its stream is
// relayed there, through a stream to node 2 itself, and follows the job to
// node 3 and back (localmove.go).
func TestMigrateTerminalLocalCLI(t *testing.T) { migrateTerminal(t, 2) }

// migrateTerminal runs TestMigrateTerminal with onnode typed on node cli.
func migrateTerminal(t *testing.T, cli int) {
	c := migrateCluster(t)
	dir, prog, private := progAndPrivateDir(t, c, "ttyprog.py", ttyProg)
	resume := filepath.Join(dir, "resume")
	marker := fmt.Sprintf("ssi-tty-%d", rand.IntN(1<<30))
	cmd := c.cliCmd(cli, "onnode", "-t", "2", "/usr/bin/python3", prog, resume, private+"/f", marker)
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
	// What the job must print besides its ticks, in order; keys typed
	// while it does not read wait in unread until it resumes.
	var want, unread []string
	keys := 0
	typed := func(s string) []string {
		var l []string
		for _, k := range s {
			keys++
			l = append(l, fmt.Sprintf("key %d '%c'", keys, k))
		}
		return l
	}
	// typeKey types keys the job reads at once, and waits for the last.
	typeKey := func(s string) {
		t.Helper()
		ptmx.Write([]byte(s))
		want = append(want, typed(s)...)
		expect(want[len(want)-1])
	}
	// typeDuring types keys while fn runs (a move).
	typeDuring := func(s string, paused bool, fn func()) {
		t.Helper()
		l := typed(s)
		if paused {
			unread = append(unread, l...)
		} else {
			want = append(want, l...)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, k := range s {
				ptmx.Write([]byte(string(k)))
				time.Sleep(15 * time.Millisecond)
			}
		}()
		fn()
		<-done
		if !paused {
			expect(want[len(want)-1])
		}
	}
	event := func(key, line string) {
		t.Helper()
		if key != "" {
			ptmx.Write([]byte(key))
		}
		want = append(want, line)
		expect(line)
	}
	pause := func(s string) {
		t.Helper()
		event("p", "pause")
		ptmx.Write([]byte(s))
		unread = append(unread, typed(s)...)
		time.Sleep(200 * time.Millisecond) // in its terminal now, unread
	}
	resumeNow := func() {
		t.Helper()
		if err := os.WriteFile(resume, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(append(want, "resume"), unread...)
		unread = nil
		expect(want[len(want)-1])
	}
	where := func(node string) {
		t.Helper()
		if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpidOf(t, c, marker))); got != node {
			t.Fatalf("where_pid: %q, want %s", got, node)
		}
	}

	event("", "ready 24 80")
	ticksPast(5)
	typeKey("a")
	cpid := cpidOf(t, c, marker)

	// A move that fails.
	pause("xyz")
	typeDuring("012", true, func() {
		if r := c.CLI(1, "migrate", cpid, "3"); r.Code != 1 || !strings.Contains(r.Stderr, "restoring process") {
			t.Fatalf("migrate of a job holding a file node 3 lacks: %v; want exit 1 and the restore's failure", r)
		}
	})
	where("2")
	resumeNow()
	ticksPast(3)
	event("f", "closed")

	// It moves, not reading its terminal.
	pause("uvw")
	typeDuring("3456789", true, func() { c.MustCLI(1, "migrate", cpid, "3") })
	where("3")
	resumeNow()
	ticksPast(5)
	typeKey("b")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	event("", "winch 30 100")
	event("\x03", "int 1") // ^C
	ticksPast(3)

	// And back home, reading its terminal: the one it got on node 3 moves
	// the same way.
	typeDuring("cdeghijk", false, func() { c.MustCLI(3, "migrate", cpid, "home") })
	where("2")
	typeKey("m")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	event("", "winch 40 120")
	ticksPast(3)
	event("q", "bye")
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
	// Exactly: every tick once and in order, and the rest once each.
	tick := 0
	var got []string
	for _, l := range all {
		if n, ok := strings.CutPrefix(l, "tick "); ok {
			if tick++; n != strconv.Itoa(tick) {
				t.Fatalf("tick %s where tick %d was due; the session printed:\n%s", n, tick, strings.Join(all, "\n"))
			}
			continue
		}
		got = append(got, l)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("the job printed, besides its ticks:\n%q\nwant:\n%q", got, want)
	}
}

// progAndPrivateDir writes the program text as name in a new directory
// dir, and mounts a tmpfs on dir/private in node 2's mount namespace only,
// with a file f in it (a job holding private/f cannot be restored
// elsewhere).
func progAndPrivateDir(t *testing.T, c *Cluster, name, text string) (dir, prog, private string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	prog = filepath.Join(dir, name)
	if err := os.WriteFile(prog, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	private = filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o755); err != nil {
		t.Fatal(err)
	}
	node2 := strconv.Itoa(c.PID(2))
	if out, err := exec.Command("nsenter", "-t", node2, "-m", "sh", "-c", "mount -t tmpfs none "+private+" && echo x > "+private+"/f").CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs in node 2's namespace: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("nsenter", "-t", node2, "-m", "umount", "-l", private).Run() })
	return dir, prog, private
}

// cpidOf is the cluster PID of the job whose command line holds marker.
func cpidOf(t *testing.T, c *Cluster, marker string) string {
	t.Helper()
	ps := c.MustCLI(1, "ssi", "ps")
	for _, l := range strings.Split(ps, "\n") {
		if strings.Contains(l, marker) && !strings.Contains(l, `\_`) {
			return strings.Fields(l)[0]
		}
	}
	t.Fatalf("no job %s in ps:\n%s", marker, ps)
	return ""
}
