package nsinit

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// warmRun is an init started in warm mode by a test.
type warmRun struct {
	cmd    *exec.Cmd
	conn   *net.UnixConn
	events *bufio.Scanner
}

// startWarm starts the test binary as a warm init with the given namespace
// options and clone flags, and waits for its ready report.
func startWarm(t *testing.T, opts Options, cloneflags uintptr) *warmRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	child := os.NewFile(uintptr(pair[1]), "child")
	parent := os.NewFile(uintptr(pair[0]), "parent")
	fc, err := net.FileConn(parent)
	parent.Close()
	if err != nil {
		t.Fatal(err)
	}
	opts.PoolFD = 3
	args := opts.Args(nil)
	cmd := exec.CommandContext(ctx, "/proc/self/exe", append([]string{Command}, args[:len(args)-1]...)...)
	cmd.Env = []string{"GORACE=" + os.Getenv("GORACE")}
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: cloneflags}
	cmd.WaitDelay = 5 * time.Second
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()
	r := &warmRun{cmd: cmd, conn: fc.(*net.UnixConn)}
	r.events = bufio.NewScanner(r.conn)
	t.Cleanup(func() {
		r.conn.Close()
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
		}
	})
	r.next(t, Ready)
	return r
}

func (r *warmRun) next(t *testing.T, want EventKind) Event {
	t.Helper()
	_ = r.conn.SetReadDeadline(time.Now().Add(testTimeout))
	if !r.events.Scan() {
		t.Fatalf("the socket closed (%v), want a %q event", r.events.Err(), want)
	}
	e, err := ParseEvent(r.events.Text())
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != want {
		t.Fatalf("got event %q, want %q", e, want)
	}
	return e
}

func (r *warmRun) wait(t *testing.T) int {
	t.Helper()
	err := r.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("waiting for the init: %v", err)
	}
	return r.cmd.ProcessState.ExitCode()
}

// send hands argv to the init with stdin empty and stdout returned as a
// reader (stderr goes to the test's).
func (r *warmRun) send(t *testing.T, opts Options, argv, env []string) io.Reader {
	t.Helper()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	or, ow, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ow.Close()
	t.Cleanup(func() { or.Close() })
	if err := SendJob(r.conn, opts.Args(argv), env, [3]*os.File{devnull, ow, os.Stderr}); err != nil {
		t.Fatal(err)
	}
	r.next(t, Accepted)
	return or
}

const testPath = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

func TestWarmMode(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	r := startWarm(t, Options{MountProc: true}, nsFlags)
	out := r.send(t, Options{Dir: dir, NoCtty: true},
		[]string{"sh", "-c", `echo $$ "$FOO"; pwd; ls /proc | grep -c '^[0-9]'; tr '\0' ' ' </proc/1/cmdline; echo; env | grep -c .`},
		[]string{testPath, "FOO=bar baz"})
	// The init's threads take the first PIDs of the namespace.
	started := r.next(t, Started)
	if started.Pid < 2 || started.Pid > 100 {
		t.Errorf("the job is PID %d in its namespace, want a small number", started.Pid)
	}
	if e := r.next(t, Exited); e.Code != 0 {
		t.Errorf("job exited %d", e.Code)
	}
	b, _ := io.ReadAll(out)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 5 {
		t.Fatalf("output %q", b)
	}
	if want := strconv.Itoa(started.Pid) + " bar baz"; lines[0] != want || lines[1] != dir {
		t.Errorf("PID and environment %q, directory %q; want %q, %q", lines[0], lines[1], want, dir)
	}
	// The init, sh, ls and grep.
	if n, _ := strconv.Atoi(lines[2]); n < 1 || n > 5 {
		t.Errorf("/proc shows %s processes: not a fresh /proc of the namespace", lines[2])
	}
	if !strings.Contains(lines[3], "-pool-fd") {
		t.Errorf("PID 1 is %q, want the warm init", lines[3])
	}
	if n, _ := strconv.Atoi(lines[4]); n > 5 {
		t.Errorf("the job sees %d environment variables; only its own (and sh's PWD...) are expected", n)
	}
	if code := r.wait(t); code != 0 {
		t.Errorf("init exit code %d", code)
	}
}

func TestWarmModeStatusAndSignals(t *testing.T) {
	needRoot(t)
	r := startWarm(t, Options{MountProc: true}, nsFlags)
	// Signals that reach the init while it waits are not the job's.
	if err := r.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	out := r.send(t, Options{NoCtty: true}, []string{"sh", "-c", `echo ready; sleep 100`}, []string{testPath})
	r.next(t, Started)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("reading the job's output: %q, %v (killed by the idle SIGUSR1?)", line, err)
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if e := r.next(t, Killed); e.Signal != syscall.SIGTERM {
		t.Errorf("job died of %v, want SIGTERM", e.Signal)
	}
	if code := r.wait(t); code != 128+15 {
		t.Errorf("init exit code %d, want 143", code)
	}
}

func TestWarmModeEndsWithoutJob(t *testing.T) {
	needRoot(t)
	t.Run("eof", func(t *testing.T) {
		r := startWarm(t, Options{MountProc: true}, nsFlags)
		r.conn.Close()
		if code := r.wait(t); code != 0 {
			t.Errorf("init exit code %d, want 0", code)
		}
	})
	t.Run("sigterm", func(t *testing.T) {
		r := startWarm(t, Options{MountProc: true}, nsFlags)
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := r.wait(t); code != 128+15 {
			t.Errorf("init exit code %d, want 143", code)
		}
	})
}

func TestWarmModeRefusesNamespaceFlagsWithJob(t *testing.T) {
	needRoot(t)
	r := startWarm(t, Options{MountProc: true}, nsFlags)
	r.send(t, Options{Hostname: "x"}, []string{"true"}, []string{testPath})
	if e := r.next(t, Failed); e.Reason != ReasonSetup {
		t.Errorf("failure %q, want a setup failure", e)
	}
	if code := r.wait(t); code != ExitSetup {
		t.Errorf("init exit code %d, want %d", code, ExitSetup)
	}
}

func TestWarmModeNotFound(t *testing.T) {
	needRoot(t)
	r := startWarm(t, Options{MountProc: true}, nsFlags)
	r.send(t, Options{}, []string{"no-such-command-xyz"}, []string{testPath})
	if e := r.next(t, Failed); e.Reason != ReasonNotFound {
		t.Errorf("failure %q, want notfound", e)
	}
	if code := r.wait(t); code != ExitNotFound {
		t.Errorf("init exit code %d, want %d", code, ExitNotFound)
	}
}

// A request larger than one socket write, so that it arrives in pieces.
func TestWarmModeLargeRequest(t *testing.T) {
	needRoot(t)
	r := startWarm(t, Options{MountProc: true}, nsFlags)
	env := []string{testPath}
	for i := range 12 { // 768 KiB; one string may not exceed 128 KiB
		env = append(env, "BIG"+strconv.Itoa(i)+"="+strings.Repeat("x", 64<<10))
	}
	out := r.send(t, Options{}, []string{"sh", "-c", `echo ${#BIG0} ${#BIG11}`}, env)
	r.next(t, Started)
	r.next(t, Exited)
	b, _ := io.ReadAll(out)
	if got, want := strings.TrimSpace(string(b)), "65536 65536"; got != want {
		t.Errorf("the job saw %q, want %q", got, want)
	}
	r.wait(t)
}

func TestWarmArgs(t *testing.T) {
	for _, bad := range [][]string{
		{"-pool-fd", "3", "--", "true"},
		{"-pool-fd", "3", "-status-fd", "4", "--"},
	} {
		if _, _, err := parseArgs(bad); err == nil {
			t.Errorf("parseArgs(%q) accepted", bad)
		}
	}
	o, argv, err := parseArgs([]string{"-mount-proc", "-pool-fd", "3"})
	if err != nil || o.PoolFD != 3 || !o.MountProc || len(argv) != 0 {
		t.Errorf("parseArgs: %+v %q %v", o, argv, err)
	}
}
