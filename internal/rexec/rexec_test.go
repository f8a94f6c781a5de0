package rexec

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestExitStatus(t *testing.T) {
	cases := []struct {
		name   string
		script string
		want   Status
		code   int
	}{
		{"zero", "exit 0", Status{}, 0},
		{"three", "exit 3", Status{Code: 3}, 3},
		{"sigkill", "kill -KILL $$", Status{Signal: syscall.SIGKILL}, 137},
		{"sigterm", "kill -TERM $$", Status{Signal: syscall.SIGTERM}, 143},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					st, _, _ := run(t, m.spec(t, "sh", "-c", tc.script))
					if st != tc.want || st.ExitCode() != tc.code {
						t.Errorf("status %+v (exit code %d), want %+v (%d)", st, st.ExitCode(), tc.want, tc.code)
					}
				})
			}
		})
	}
}

func TestStreams(t *testing.T) {
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			st, out, errOut := run(t, m.spec(t, "sh", "-c", "echo out; echo err >&2"))
			if st.ExitCode() != 0 || out != "out\n" || errOut != "err\n" {
				t.Errorf("got status %v, stdout %q, stderr %q; want 0, \"out\\n\", \"err\\n\"", st, out, errOut)
			}
		})
	}
}

func TestEnvAndDir(t *testing.T) {
	dir := t.TempDir()
	spec := modes[0].spec(t, "sh", "-c", `echo "$FOO"; pwd; env | grep -c . `)
	spec.Env = append(spec.Env, "FOO=bar baz")
	spec.Dir = dir
	_, out, _ := run(t, spec)
	// sh adds PWD (and maybe SHLVL, _) on top of the four given.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || lines[0] != "bar baz" || lines[1] != dir {
		t.Fatalf("output %q, want FOO, the directory and a count", out)
	}
	if n, _ := strconv.Atoi(lines[2]); n < 4 || n > 8 {
		t.Errorf("the job sees %d environment variables; the daemon's own must not leak", n)
	}
}

// TestLargeStream pushes 100 MB through cat and checks it arrives intact,
// and that the writer is never far ahead of the reader: the engine adds no
// buffering of its own, so a job that is not read from blocks its writer.
func TestLargeStream(t *testing.T) {
	const total = 100 << 20
	const chunk = 64 << 10
	// Stdin pipe + cat's buffer + stdout pipe hold well under 1 MiB; allow
	// 4 MiB, far below what an unbounded buffer would reach.
	const slack = 4 << 20

	spec := modes[0].spec(t, "cat")
	j := start(t, spec)
	var written atomic.Int64
	wantSum := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		buf := make([]byte, chunk)
		for i := 0; i < total/chunk; i++ {
			for k := range buf {
				buf[k] = byte(i*131 + k*7 + k>>9)
			}
			h.Write(buf)
			if _, err := j.Stdin().Write(buf); err != nil {
				t.Errorf("writing stdin: %v", err)
				break
			}
			written.Add(chunk)
		}
		j.Stdin().Close()
		wantSum <- h.Sum(nil)
	}()
	h := sha256.New()
	var read, maxAhead int64
	buf := make([]byte, 32<<10)
	for {
		n, err := j.Stdout().Read(buf)
		h.Write(buf[:n])
		read += int64(n)
		maxAhead = max(maxAhead, written.Load()-read)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading stdout: %v", err)
		}
	}
	if st := wait(t, j); st.ExitCode() != 0 {
		t.Fatalf("cat: %v", st)
	}
	if read != total {
		t.Fatalf("read %d bytes, want %d", read, total)
	}
	if !bytes.Equal(h.Sum(nil), <-wantSum) {
		t.Fatal("the data came back changed (sha256 differs)")
	}
	if maxAhead > slack {
		t.Errorf("the writer got %d bytes ahead of the reader: something buffers without bound", maxAhead)
	}
	t.Logf("writer was at most %d KiB ahead", maxAhead>>10)
}

func TestStdinEOF(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			j := start(t, m.spec(t, "cat"))
			c := collect(j)
			if _, err := io.WriteString(j.Stdin(), "hello\n"); err != nil {
				t.Fatal(err)
			}
			j.Stdin().Close()
			if st := wait(t, j); st.ExitCode() != 0 {
				t.Errorf("cat: %v", st)
			}
			c.done(t)
			if c.out.String() != "hello\n" {
				t.Errorf("stdout %q", c.out.String())
			}
		})
	}
}

func TestSignal(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGINT, syscall.SIGHUP} {
				t.Run(sig.String(), func(t *testing.T) {
					j := start(t, m.spec(t, "sleep", "100"))
					if err := j.Signal(sig); err != nil {
						t.Fatal(err)
					}
					if st := wait(t, j); st.Signal != sig || st.ExitCode() != 128+int(sig) {
						t.Errorf("status %v, want death by %v (%d)", st, sig, 128+int(sig))
					}
					if err := j.Signal(syscall.SIGTERM); !errors.Is(err, ErrFinished) {
						t.Errorf("Signal after the end: %v, want ErrFinished", err)
					}
				})
			}
		})
	}
}

func TestStopContinue(t *testing.T) {
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			j := start(t, m.spec(t, "sleep", "100"))
			if j.MainPid() == 0 {
				t.Fatal("MainPid unknown")
			}
			state := func() string { p, _ := ReadProc(j.MainPid()); return p.State }
			if err := j.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the job is stopped", func() bool { return state() == "T" })
			if err := j.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the job runs again", func() bool { return state() == "S" })
			_ = j.Signal(syscall.SIGTERM)
			if st := wait(t, j); st.ExitCode() != 143 {
				t.Errorf("status %v, want 143", st)
			}
		})
	}
}

func TestCredentials(t *testing.T) {
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			needRoot(t)
			spec := m.spec(t, "sh", "-c", "id -u; id -g; id -G; touch $HOME/x 2>/dev/null || echo denied")
			spec.UID, spec.GID, spec.Groups = 65534, 65534, []uint32{65534, 4}
			spec.Env = append(spec.Env, "HOME=/root")
			st, out, _ := run(t, spec)
			if want := "65534\n65534\n65534 4\ndenied\n"; out != want || st.ExitCode() != 0 {
				t.Errorf("output %q (%v), want %q", out, st, want)
			}
		})
	}
}

func TestCheckCredentialsWithoutRoot(t *testing.T) {
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if err := checkCredentials(Spec{UID: uid, GID: gid}, false); err != nil {
		t.Errorf("own credentials refused: %v", err)
	}
	for _, s := range []Spec{{UID: uid + 1, GID: gid}, {UID: uid, GID: gid + 1}, {UID: uid, GID: gid, Groups: []uint32{4242424}}} {
		if err := checkCredentials(s, false); !errors.Is(err, ErrPermission) {
			t.Errorf("checkCredentials(%+v) = %v, want ErrPermission", s, err)
		}
	}
}

func TestNoRootFallback(t *testing.T) {
	if os.Geteuid() == 0 {
		// Tell Start it is not root; the job then runs as root anyway.
		isRoot = func() bool { return false }
		defer func() { isRoot = func() bool { return os.Geteuid() == 0 } }()
	}
	spec := modes[0].spec(t, "sh", "-c", "echo $$")
	spec.Namespaces, spec.Cgroup = true, true
	j := start(t, spec)
	c := collect(j)
	j.Stdin().Close()
	if st := wait(t, j); st.ExitCode() != 0 {
		t.Fatalf("status %v", st)
	}
	c.done(t)
	if j.Migratable() || j.Namespaced() || j.CgroupPaths() != nil {
		t.Errorf("without root: Migratable %v, Namespaced %v, cgroup %v; want none", j.Migratable(), j.Namespaced(), j.CgroupPaths())
	}
	if got := strings.TrimSpace(c.out.String()); got != strconv.Itoa(j.Pid()) {
		t.Errorf("the job's own PID is %s, want the host PID %d (no namespace)", got, j.Pid())
	}
}

func TestNotFound(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			for _, tc := range []struct {
				argv0 string
				want  error
			}{
				{"no-such-command-ssi", ErrNotFound},
				{"/no/such/path", ErrNotFound},
				{noexec, ErrNotExecutable},
				{dir, ErrNotExecutable},
			} {
				spec := m.spec(t, tc.argv0)
				_, err := Start(context.Background(), spec)
				if !errors.Is(err, tc.want) {
					t.Errorf("Start(%q) = %v, want %v", tc.argv0, err, tc.want)
				}
			}
		})
	}
	if _, err := Start(context.Background(), Spec{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Start with no argv = %v, want ErrNotFound", err)
	}
}

func TestBadInit(t *testing.T) {
	needRoot(t)
	spec := modes[1].spec(t, "true")
	spec.InitPath = "/bin/true" // exits at once, reports nothing
	if _, err := Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "without starting the command") {
		t.Errorf("Start with a non-ssi init: %v", err)
	}
}

var ptsName = regexp.MustCompile(`^/dev/pts/\d+\r\n$`)

func TestTTY(t *testing.T) {
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "tty")
			spec.TTY = true
			st, out, errOut := run(t, spec)
			if st.ExitCode() != 0 || !ptsName.MatchString(out) || errOut != "" {
				t.Errorf("tty printed %q, stderr %q (%v); want a /dev/pts name", out, errOut, st)
			}
		})
	}
}

func TestTTYSize(t *testing.T) {
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "sh", "-c", "stty size; read x; stty size; [ -t 0 ] && echo isatty")
			spec.TTY, spec.Rows, spec.Cols = true, 30, 90
			j := start(t, spec)
			out := bufio.NewReader(j.Stdout())
			if line, err := out.ReadString('\n'); err != nil || line != "30 90\r\n" {
				t.Fatalf("initial size %q, %v; want 30 90", line, err)
			}
			if err := j.Resize(40, 100); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(j.Stdin(), "go\n"); err != nil {
				t.Fatal(err)
			}
			rest, _ := io.ReadAll(out)
			if st := wait(t, j); st.ExitCode() != 0 {
				t.Errorf("status %v", st)
			}
			if want := "go\r\n40 100\r\nisatty\r\n"; string(rest) != want {
				t.Errorf("after Resize: %q, want %q", rest, want)
			}
		})
	}
}

func TestTTYStdinEOF(t *testing.T) {
	spec := modes[0].spec(t, "cat")
	spec.TTY = true
	j := start(t, spec)
	c := collect(j)
	j.Stdin().Close() // ^D at the start of a line: cat sees EOF
	if st := wait(t, j); st.ExitCode() != 0 {
		t.Errorf("status %v", st)
	}
	c.done(t)
	if err := j.Resize(1, 1); err != nil {
		t.Errorf("Resize after the end: %v (the terminal stays until Close)", err)
	}
}

func TestResizeWithoutTTY(t *testing.T) {
	spec := modes[0].spec(t, "true")
	j := start(t, spec)
	if err := j.Resize(10, 10); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Resize: %v, want ErrNotSupported", err)
	}
	if err := j.Freeze(); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Freeze: %v, want ErrNotSupported", err)
	}
	wait(t, j)
}

func TestNamespaceIsolation(t *testing.T) {
	spec := modes[1].spec(t, "sh", "-c", `echo $$; grep NSpid /proc/self/status; hostname`)
	spec.Hostname = "ssi-job-test"
	host, _ := os.Hostname()
	_, out, _ := run(t, spec)
	lines := strings.Split(out, "\n")
	if len(lines) < 3 {
		t.Fatalf("output %q", out)
	}
	if pid, _ := strconv.Atoi(lines[0]); pid < 2 || pid > 100 {
		t.Errorf("the job's PID in its namespace is %q; want a small number", lines[0])
	}
	// The job shares the node's /proc (jobCloneflags): its processes are
	// there under their node-wide PIDs, NSpid gives both.
	if f := strings.Fields(lines[1]); len(f) != 3 || f[0] != "NSpid:" {
		t.Errorf("%q: want the node's and the namespace's PID", lines[1])
	} else if pid, _ := strconv.Atoi(f[2]); pid < 2 || pid > 100 {
		t.Errorf("%q: want a small PID in the job's namespace", lines[1])
	}
	if lines[2] != "ssi-job-test" {
		t.Errorf("hostname %q, want ssi-job-test", lines[2])
	}
	if now, _ := os.Hostname(); now != host {
		t.Errorf("the host's hostname changed to %q", now)
	}
}

func cgroupVersions(t *testing.T) []bool {
	needRoot(t)
	h, err := cgroupHierarchies()
	if err != nil {
		t.Skipf("no cgroups: %v", err)
	}
	var vs []bool
	if _, ok := h.v1["freezer"]; ok {
		vs = append(vs, false)
	}
	if h.v2 != "" {
		if _, err := os.Stat(filepath.Join(h.v2, "cgroup.controllers")); err == nil {
			vs = append(vs, true)
		}
	}
	if len(vs) == 0 {
		t.Skip("no cgroup freezer available")
	}
	return vs
}

func withCgroupVersion(t *testing.T, v2 bool) {
	preferV2.Store(v2)
	t.Cleanup(func() { preferV2.Store(false) })
}

func TestFreezeThaw(t *testing.T) {
	for _, v2 := range cgroupVersions(t) {
		t.Run(map[bool]string{false: "v1", true: "v2"}[v2], func(t *testing.T) {
			withCgroupVersion(t, v2)
			j := start(t, modes[2].spec(t, "sh", "-c", "while :; do :; done"))
			if got := j.cg.v2; got != v2 {
				t.Fatalf("cgroup v2 = %v, want %v", got, v2)
			}
			cpu := func() time.Duration { p, _ := ReadProc(j.MainPid()); return p.CPUTime }
			eventually(t, "the loop uses CPU", func() bool { return cpu() > 0 })

			if err := j.Freeze(); err != nil {
				t.Fatal(err)
			}
			p, _ := ReadProc(j.MainPid())
			if p.State == "R" {
				t.Errorf("frozen job is in state %s", p.State)
			}
			// A running busy loop accumulates ~20 ticks in 200ms; a frozen
			// one none. (Only a loaded machine could hide a broken freeze.)
			before := cpu()
			time.Sleep(200 * time.Millisecond)
			if after := cpu(); after != before {
				t.Errorf("the frozen job used CPU: %v -> %v", before, after)
			}

			if err := j.Thaw(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the thawed loop uses CPU again", func() bool { return cpu() > before })
			_ = j.Signal(syscall.SIGKILL)
			if st := wait(t, j); st.Signal != syscall.SIGKILL {
				t.Errorf("status %v, want SIGKILL", st)
			}
		})
	}
}

func TestKillWhileFrozen(t *testing.T) {
	for _, v2 := range cgroupVersions(t) {
		t.Run(map[bool]string{false: "v1", true: "v2"}[v2], func(t *testing.T) {
			withCgroupVersion(t, v2)
			j := start(t, modes[3].spec(t, "sleep", "100"))
			if err := j.Freeze(); err != nil {
				t.Fatal(err)
			}
			_ = j.Signal(syscall.SIGKILL)
			// A frozen job cannot die until thawed.
			if err := j.Thaw(); err != nil && !errors.Is(err, ErrFinished) {
				t.Fatal(err)
			}
			if st := wait(t, j); st.Signal != syscall.SIGKILL {
				t.Errorf("status %v, want SIGKILL", st)
			}
		})
	}
}

const forkScript = `sleep 100 & sleep 100 & echo ready; wait`

func TestPids(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "sh", "-c", forkScript)
			j := start(t, spec)
			if line, _ := bufio.NewReader(j.Stdout()).ReadString('\n'); line != "ready\n" {
				t.Fatalf("output %q", line)
			}
			var comms []string
			eventually(t, "Pids lists sh and both sleeps", func() bool {
				comms = nil
				for _, p := range j.Pids() {
					pi, err := ReadProc(p)
					if err != nil {
						return false
					}
					comms = append(comms, pi.Comm)
				}
				slices.Sort(comms)
				return slices.Equal(comms, []string{"sh", "sleep", "sleep"})
			})
			if !slices.Contains(j.Pids(), j.MainPid()) || (j.shim && slices.Contains(j.Pids(), j.Pid())) {
				t.Errorf("Pids %v: want the command %d and not the init %d", j.Pids(), j.MainPid(), j.Pid())
			}
			u, err := j.Usage()
			if err != nil {
				t.Fatal(err)
			}
			if u.Procs != 3 || u.RSS == 0 || !strings.Contains("RSD", u.State) || u.State == "" || u.Start.IsZero() || time.Since(u.Start) > testTimeout || u.CPUPercent < 0 {
				t.Errorf("implausible usage %+v", u)
			}
			_ = j.Signal(syscall.SIGKILL)
			wait(t, j)
			if pids := j.Pids(); pids != nil {
				t.Errorf("Pids after the end: %v", pids)
			}
		})
	}
}

func TestLeftoversKilled(t *testing.T) {
	for _, m := range modes[1:] {
		t.Run(m.name, func(t *testing.T) {
			// The background sleep keeps stdout open; it must be killed
			// when the shell exits, or stdout never reaches EOF.
			spec := m.spec(t, "sh", "-c", "sleep 1000 & echo $!")
			st, out, _ := run(t, spec)
			if st.ExitCode() != 0 || strings.TrimSpace(out) == "" {
				t.Errorf("status %v, output %q", st, out)
			}
		})
	}
}

func TestDetached(t *testing.T) {
	for _, tty := range []bool{false, true} {
		t.Run(map[bool]string{false: "pipes", true: "tty"}[tty], func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "job.log")
			if err := os.WriteFile(log, []byte("earlier\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			spec := modes[0].spec(t, "sh", "-c", "echo out; echo err >&2")
			spec.LogPath, spec.TTY = log, tty
			j := start(t, spec)
			if !tty {
				if _, err := j.Stdin().Write([]byte("x")); !errors.Is(err, ErrNotSupported) {
					t.Errorf("writing to a detached job's stdin: %v", err)
				}
			}
			if st := wait(t, j); st.ExitCode() != 0 {
				t.Fatalf("status %v", st)
			}
			want := "earlier\nout\nerr\n"
			if tty {
				want = "earlier\nout\r\nerr\r\n"
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // the job has ended: copy what is there and return
			var buf bytes.Buffer
			off, err := Follow(ctx, log, 0, &buf)
			if err != nil || buf.String() != want || off != int64(len(want)) {
				t.Errorf("Follow = %d, %v, %q; want %q", off, err, buf.String(), want)
			}
		})
	}
}

// chanWriter sends what is written to a channel.
type chanWriter chan string

func (c chanWriter) Write(p []byte) (int, error) { c <- string(p); return len(p), nil }

func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("skipped|old\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chanWriter, 100)
	type result struct {
		off int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		off, err := Follow(ctx, path, int64(len("skipped|")), out)
		done <- result{off, err}
	}()
	got := ""
	expect := func(want string) {
		t.Helper()
		timeout := time.After(testTimeout)
		for got != want {
			select {
			case s := <-out:
				got += s
			case <-timeout:
				t.Fatalf("followed %q, want %q", got, want)
			}
		}
	}
	expect("old\n")
	for _, line := range []string{"one\n", "two\n", "three\n"} {
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
		expect(got + line) // each append arrives without waiting for the end
	}
	// Truncation starts over.
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got = ""
	if _, err := f.WriteString("new\n"); err != nil {
		t.Fatal(err)
	}
	expect("new\n")
	if _, err := f.WriteString("last\n"); err != nil {
		t.Fatal(err)
	}
	cancel()
	r := <-done
	close(out)
	for s := range out {
		got += s
	}
	if r.err != nil || got != "new\nlast\n" || r.off != int64(len("new\nlast\n")) {
		t.Errorf("Follow ended with %d, %v; followed %q", r.off, r.err, got)
	}
	if _, err := Follow(context.Background(), filepath.Join(t.TempDir(), "missing"), 0, io.Discard); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Follow of a missing file: %v", err)
	}
}

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		st   Status
		code int
		str  string
	}{
		{Status{}, 0, "exit status 0"},
		{Status{Code: 3}, 3, "exit status 3"},
		{Status{Signal: syscall.SIGKILL}, 137, "killed by signal 9 (killed)"},
		{Status{Signal: syscall.SIGSEGV, Core: true}, 139, "killed by signal 11 (segmentation fault) (core dumped)"},
	} {
		if tc.st.ExitCode() != tc.code || tc.st.String() != tc.str {
			t.Errorf("%+v: ExitCode %d String %q; want %d %q", tc.st, tc.st.ExitCode(), tc.st.String(), tc.code, tc.str)
		}
	}
}

func TestStartCancelled(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	spec := modes[3].spec(t, "sleep", "100")
	spec.ID = "cancelled-" + strconv.Itoa(os.Getpid())
	if _, err := Start(ctx, spec); !errors.Is(err, context.Canceled) {
		t.Errorf("Start with a cancelled context: %v", err)
	}
	// Its cgroup was removed; the same ID can be used again.
	j := start(t, spec)
	_ = j.Signal(syscall.SIGTERM)
	wait(t, j)
}

func TestBadID(t *testing.T) {
	for _, id := range []string{"../x", "a/b", ".hidden", strings.Repeat("x", 65)} {
		if _, err := Start(context.Background(), Spec{ID: id, Argv: []string{"true"}}); err == nil {
			t.Errorf("Start accepted job ID %q", id)
		}
	}
}

func TestUnenterableDir(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "private")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "true")
			spec.UID, spec.GID, spec.Dir = 65534, 65534, dir
			_, err := Start(context.Background(), spec)
			if err == nil || errors.Is(err, ErrNotExecutable) || !strings.Contains(err.Error(), "cannot enter the working directory") {
				t.Errorf("Start in a directory uid 65534 cannot enter: %v", err)
			}
		})
	}
}
