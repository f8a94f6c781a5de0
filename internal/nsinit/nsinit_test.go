package nsinit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// The test binary doubles as the init: the tests re-execute it with the same
// arguments the ssi binary would get.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == Command {
		os.Exit(Main(os.Args[2:]))
	}
	// A -race build sleeps a second before exiting (atexit_sleep_ms); the
	// re-executed inits inherit this and exit promptly.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	os.Exit(m.Run())
}

// testTimeout bounds every init a test starts; it only fires when something
// hangs, never on a slow machine that still makes progress.
const testTimeout = 60 * time.Second

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates PID and mount namespaces")
	}
}

type initRun struct {
	cmd    *exec.Cmd
	events chan Event
	out    *bytes.Buffer
	stdout io.Reader
}

// startInit re-executes the test binary as the init for argv, with a status
// pipe, and the given clone flags. Stdout is returned as a reader when
// pipeStdout is set, otherwise collected in out.
func startInit(t *testing.T, opts Options, argv []string, cloneflags uintptr, pipeStdout bool) *initRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	sr, sw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	opts.StatusFD = 3
	cmd := exec.CommandContext(ctx, "/proc/self/exe", append([]string{Command}, opts.Args(argv)...)...)
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.ExtraFiles = []*os.File{sw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: cloneflags}
	cmd.WaitDelay = 5 * time.Second
	r := &initRun{cmd: cmd, events: make(chan Event, 4), out: new(bytes.Buffer)}
	if pipeStdout {
		r.stdout, err = cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
	} else {
		cmd.Stdout = r.out
	}
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the init: %v", err)
	}
	sw.Close()
	go func() {
		defer sr.Close()
		defer close(r.events)
		sc := bufio.NewScanner(sr)
		for sc.Scan() {
			e, err := ParseEvent(sc.Text())
			if err != nil {
				t.Errorf("status pipe: %v", err)
				return
			}
			r.events <- e
		}
	}()
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("stderr of the init and job: %q", stderr)
		}
	})
	return r
}

func (r *initRun) next(t *testing.T, want EventKind) Event {
	t.Helper()
	e, ok := <-r.events
	if !ok {
		t.Fatalf("status pipe closed, want a %q event", want)
	}
	if e.Kind != want {
		t.Fatalf("got event %q, want %q", e, want)
	}
	return e
}

// wait waits for the init and returns its exit code.
func (r *initRun) wait(t *testing.T) int {
	t.Helper()
	err := r.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("waiting for the init: %v", err)
	}
	ws := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		t.Fatalf("the init died of %v; it must exit with a code", ws.Signal())
	}
	return ws.ExitStatus()
}

const nsFlags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS

func TestSigtermEndsJobInPIDNamespace(t *testing.T) {
	needRoot(t)
	r := startInit(t, Options{MountProc: true}, []string{"sleep", "100"}, nsFlags, false)
	r.next(t, Started)
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e := r.next(t, Killed)
	if e.Signal != syscall.SIGTERM {
		t.Errorf("job died of %v, want SIGTERM", e.Signal)
	}
	if code := r.wait(t); code != 128+15 {
		t.Errorf("init exit code %d, want 143", code)
	}
}

func TestSignalsReachTheWholeGroup(t *testing.T) {
	// The shell waits for its child, which prints "ready" and becomes
	// `sleep 100`. Only if the SIGTERM reaches the whole group does the
	// sleep die, so the shell's trap runs and the code passes through.
	r := startInit(t, Options{}, []string{"sh", "-c", `trap 'exit 7' TERM; (echo ready; exec sleep 100); exit 1`}, 0, true)
	r.next(t, Started)
	line, err := bufio.NewReader(r.stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("reading the job's output: %q, %v", line, err)
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if e := r.next(t, Exited); e.Code != 7 {
		t.Errorf("job exited %d, want 7", e.Code)
	}
	if code := r.wait(t); code != 7 {
		t.Errorf("init exit code %d, want 7", code)
	}
}

func TestFreshProc(t *testing.T) {
	needRoot(t)
	before := procMounts(t)
	r := startInit(t, Options{MountProc: true}, []string{"sh", "-c", `tr '\0' ' ' </proc/1/cmdline`}, nsFlags, false)
	r.next(t, Started)
	r.next(t, Exited)
	if code := r.wait(t); code != 0 {
		t.Fatalf("init exit code %d", code)
	}
	if got := r.out.String(); !strings.Contains(got, Command) {
		t.Errorf("/proc/1 in the job's namespace is %q, want the init (%s)", got, Command)
	}
	if after := procMounts(t); after != before {
		t.Errorf("the host has %d proc mounts after the test, %d before: the mount leaked", after, before)
	}
}

func procMounts(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), " - proc ")
}

func TestExitCodesPassThrough(t *testing.T) {
	for _, ns := range []bool{false, true} {
		for _, code := range []int{0, 3} {
			t.Run(strconv.Itoa(code)+map[bool]string{true: "/ns", false: "/plain"}[ns], func(t *testing.T) {
				var flags uintptr
				opts := Options{}
				if ns {
					needRoot(t)
					flags, opts.MountProc = nsFlags, true
				}
				r := startInit(t, opts, []string{"sh", "-c", "exit " + strconv.Itoa(code)}, flags, false)
				r.next(t, Started)
				if e := r.next(t, Exited); e.Code != code {
					t.Errorf("event code %d, want %d", e.Code, code)
				}
				if got := r.wait(t); got != code {
					t.Errorf("init exit code %d, want %d", got, code)
				}
			})
		}
	}
}

func TestDeathBySignalIsReported(t *testing.T) {
	r := startInit(t, Options{}, []string{"sh", "-c", "kill -KILL $$"}, 0, false)
	r.next(t, Started)
	if e := r.next(t, Killed); e.Signal != syscall.SIGKILL {
		t.Errorf("event signal %v, want SIGKILL", e.Signal)
	}
	if code := r.wait(t); code != 137 {
		t.Errorf("init exit code %d, want 137", code)
	}
}

// orphanScript leaves ten orphans behind (each `(sleep 0 &)` subshell exits
// before its sleep does), then keeps running.
const orphanScript = `i=0; while [ $i -lt 10 ]; do (sleep 0 &); i=$((i+1)); done; echo ready; exec sleep 100`

func TestOrphansAreReaped(t *testing.T) {
	for _, ns := range []bool{false, true} {
		t.Run(map[bool]string{true: "ns", false: "subreaper"}[ns], func(t *testing.T) {
			var flags uintptr
			opts := Options{}
			if ns {
				needRoot(t)
				flags, opts.MountProc = nsFlags, true
			}
			r := startInit(t, opts, []string{"sh", "-c", orphanScript}, flags, true)
			r.next(t, Started)
			line, err := bufio.NewReader(r.stdout).ReadString('\n')
			if err != nil || line != "ready\n" {
				t.Fatalf("reading the job's output: %q, %v", line, err)
			}
			// The orphans were re-parented to the init; once they have
			// exited, only the job (now `sleep 100`) may remain its child.
			// Unreaped orphans would stay forever as zombie children.
			initPid := r.cmd.Process.Pid
			deadline := time.Now().Add(testTimeout / 2)
			for {
				kids := childrenOf(t, initPid)
				if len(kids) == 1 && procState(kids[0]) != "Z" {
					break
				}
				if time.Now().After(deadline) {
					states := make([]string, len(kids))
					for i, k := range kids {
						states[i] = strconv.Itoa(k) + ":" + procState(k)
					}
					t.Fatalf("the init still has children %v: orphans are not reaped", states)
				}
				time.Sleep(10 * time.Millisecond)
			}
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			r.next(t, Killed)
			if code := r.wait(t); code != 143 {
				t.Errorf("init exit code %d, want 143", code)
			}
		})
	}
}

func TestLeftoversAreKilled(t *testing.T) {
	// The job leaves a background sleep that holds stdout; the init kills
	// it when the job exits, so stdout reaches EOF and the init returns.
	r := startInit(t, Options{}, []string{"sh", "-c", "sleep 1000 & echo $!"}, 0, true)
	r.next(t, Started)
	out, err := io.ReadAll(r.stdout)
	if err != nil {
		t.Fatal(err)
	}
	r.next(t, Exited)
	if code := r.wait(t); code != 0 {
		t.Fatalf("init exit code %d", code)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("job output %q: %v", out, err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("the job's background process %d is still alive", pid)
	}
}

func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, task := range tasks {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			kids = append(kids, n)
		}
	}
	return kids
}

func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "gone"
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return f[0]
}

func TestCommandNotFound(t *testing.T) {
	r := startInit(t, Options{}, []string{"no-such-command-ssi-test"}, 0, false)
	e := r.next(t, Failed)
	if e.Reason != ReasonNotFound {
		t.Errorf("reason %q, want %q", e.Reason, ReasonNotFound)
	}
	if code := r.wait(t); code != ExitNotFound {
		t.Errorf("init exit code %d, want %d", code, ExitNotFound)
	}
}

func TestNotExecutable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startInit(t, Options{}, []string{p}, 0, false)
	if e := r.next(t, Failed); e.Reason != ReasonNotExecutable {
		t.Errorf("reason %q, want %q", e.Reason, ReasonNotExecutable)
	}
	if code := r.wait(t); code != ExitNotExecutable {
		t.Errorf("init exit code %d, want %d", code, ExitNotExecutable)
	}
}

func TestSyncGate(t *testing.T) {
	gr, gw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Close()
	sr, sw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe", append([]string{Command}, Options{StatusFD: 3, SyncFD: 4}.Args([]string{"true"})...)...)
	cmd.ExtraFiles = []*os.File{sw, gr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sw.Close()
	gr.Close()
	gw.Close() // EOF on the gate: the init must give up without running the job
	line, _ := bufio.NewReader(sr).ReadString('\n')
	e, err := ParseEvent(line)
	if err != nil || e.Kind != Failed || e.Reason != ReasonSetup {
		t.Errorf("event %q (%v), want a setup failure", line, err)
	}
	err = cmd.Wait()
	if cmd.ProcessState.ExitCode() != ExitSetup {
		t.Errorf("init exit: %v, want code %d", err, ExitSetup)
	}
}

func TestRefusesHostNamespaces(t *testing.T) {
	needRoot(t) // reading the parent's namespaces needs it
	// In-process: the test binary shares its parent's namespaces, so the
	// checks that guard -mount-proc and -hostname must say "not our own".
	for _, kind := range []string{"mnt", "uts"} {
		own, err := ownNamespace(kind)
		if err != nil {
			t.Fatal(err)
		}
		if own {
			t.Errorf("ownNamespace(%q) = true in the test process", kind)
		}
	}
}

func TestHostname(t *testing.T) {
	needRoot(t)
	host, _ := os.Hostname()
	r := startInit(t, Options{Hostname: "ssi-job-test"}, []string{"hostname"}, syscall.CLONE_NEWUTS, false)
	r.next(t, Started)
	r.next(t, Exited)
	r.wait(t)
	if got := strings.TrimSpace(r.out.String()); got != "ssi-job-test" {
		t.Errorf("hostname in the job %q, want ssi-job-test", got)
	}
	if after, _ := os.Hostname(); after != host {
		t.Errorf("host hostname changed from %q to %q", host, after)
	}
}

func TestCredentials(t *testing.T) {
	needRoot(t)
	r := startInit(t, Options{Cred: &Credential{UID: 65534, GID: 65534, Groups: []uint32{65534, 4}}}, []string{"sh", "-c", "id -u; id -g; id -G"}, 0, false)
	r.next(t, Started)
	r.next(t, Exited)
	r.wait(t)
	if got, want := r.out.String(), "65534\n65534\n65534 4\n"; got != want {
		t.Errorf("job identity %q, want %q", got, want)
	}
}

func TestControllingTerminal(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty available: %v", err)
	}
	defer ptmx.Close()
	sr, sw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// /dev/tty opens only if the job has a controlling terminal.
	argv := []string{"sh", "-c", "tty; echo via-ctty >/dev/tty"}
	cmd := exec.CommandContext(ctx, "/proc/self/exe", append([]string{Command}, Options{StatusFD: 3}.Args(argv)...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.ExtraFiles = []*os.File{sw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	sw.Close()
	out, _ := io.ReadAll(ptmx) // EIO once every holder of the terminal is gone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("init: %v; output %q", err, out)
	}
	if !regexp.MustCompile(`^/dev/pts/\d+\r\nvia-ctty\r\n$`).Match(out) {
		t.Errorf("terminal output %q, want the pts name then via-ctty", out)
	}
	st, _ := io.ReadAll(sr)
	if !strings.Contains(string(st), "exited 0") {
		t.Errorf("status %q, want exited 0", st)
	}
}

func TestArgsRoundTrip(t *testing.T) {
	o := Options{
		Path: "/bin/sh", Dir: "/tmp", Cred: &Credential{UID: 1, GID: 2, Groups: []uint32{3, 4}},
		MountProc: true, PrivateMounts: true, Hostname: "h", StatusFD: 3, SyncFD: 4, NoCtty: true,
	}
	argv := []string{"sh", "-c", "echo -x --"}
	got, gotArgv, err := parseArgs(o.Args(argv))
	if err != nil {
		t.Fatal(err)
	}
	if !equalOptions(got, o) || strings.Join(gotArgv, "|") != strings.Join(argv, "|") {
		t.Errorf("round trip: %+v %q, want %+v %q", got, gotArgv, o, argv)
	}
	zero, _, err := parseArgs(Options{}.Args([]string{"x"}))
	if err != nil || zero.Cred != nil || zero.StatusFD >= 3 || zero.SyncFD >= 3 {
		t.Errorf("zero options round trip: %+v, %v", zero, err)
	}
	for _, bad := range [][]string{{"--"}, {"-uid", "1", "--", "x"}, {"-uid", "1", "-gid", "x", "--", "x"}, {"-groups", "a", "-uid", "0", "-gid", "0", "--", "x"}, {"-bogus", "--", "x"}} {
		if _, _, err := parseArgs(bad); err == nil {
			t.Errorf("parseArgs(%q) accepted", bad)
		}
	}
}

func equalOptions(a, b Options) bool {
	return reflect.DeepEqual(a, b)
}
