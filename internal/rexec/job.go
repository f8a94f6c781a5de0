package rexec

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// Job is a started job. Its methods are safe for concurrent use.
//
// The caller owns the parent's ends of the job's stdio: it reads Stdout and
// Stderr until EOF (which comes when every process holding the other end has
// exited), writes and closes Stdin, calls Wait, and finally Close.
type Job struct {
	id         string
	cmd        *exec.Cmd
	shim       bool // nsinit runs between the engine and the command
	warm       bool // the init came from a Pool
	namespaced bool
	migratable bool
	root       string // Spec.Root
	pid        int    // top process: the init, or the command
	mainPid    int    // the command (host PID); 0 if it exited before we found it
	cg         *cgroup
	cgMu       sync.Mutex // serializes cgroup use with its removal
	cgGone     bool       // the cgroup has been removed
	tty        *os.File   // pty master, if TTY
	stdin      io.WriteCloser
	stdout     io.Reader
	stderr     io.Reader
	closers    []io.Closer // parent's ends, closed by Close
	logFile    *os.File
	copyDone   chan struct{} // TTY output copied to the log (detached TTY jobs)
	events     chan nsinit.Event
	reaper     func() error // waits for the top process; nil: cmd.Wait

	exited     chan struct{} // the status is known (see Exited)
	exitStatus Status
	exitErr    error

	done    chan struct{}
	status  Status
	waitErr error

	closeOnce sync.Once
}

var (
	// isRoot is replaced by tests to exercise the fallback.
	isRoot = func() bool { return os.Geteuid() == 0 }
	jobSeq atomic.Uint64

	// tracePhase, when set (by benchmarks), is called as a job passes the
	// steps of its start and end, to show where the time goes.
	tracePhase func(id, phase string)
)

// validID reports whether id is a valid Spec.ID: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$
// (a function, not a regexp: compiling that one took 0.2ms at every start of
// the binary).
func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func (j *Job) trace(phase string) {
	if tracePhase != nil {
		tracePhase(j.id, phase)
	}
}

// Start starts a job. ctx bounds only the start itself (for a job under
// nsinit, until the init reports that the command runs); cancelling it later
// does not affect the job: use Signal.
//
// A command that does not exist gives an error wrapping ErrNotFound (the
// caller should exit 127), one that cannot be executed ErrNotExecutable
// (126).
func Start(ctx context.Context, spec Spec) (*Job, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, fmt.Errorf("%w: no command given", ErrNotFound)
	}
	if spec.ID == "" {
		spec.ID = strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(jobSeq.Add(1), 10)
	} else if !validID(spec.ID) {
		return nil, fmt.Errorf("job ID %q: use at most 64 letters, digits, '.', '_' or '-'", spec.ID)
	}
	if spec.Dir == "" {
		spec.Dir = "/"
	}
	if spec.Env == nil {
		spec.Env = []string{"PATH=" + DefaultPath}
	}
	if spec.InitPath == "" {
		spec.InitPath = "/proc/self/exe"
	}
	log := slog.With("job", spec.ID)

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("starting job: %w", err)
	}
	root := isRoot()
	if err := checkCredentials(spec, root); err != nil {
		return nil, err
	}
	if !root && (spec.Namespaces || spec.Cgroup) {
		log.Warn("daemon is not root: running the job without namespaces or cgroup; it cannot migrate")
		spec.Namespaces, spec.Cgroup = false, false
	}
	path := ""
	if spec.Root != "" {
		// The command and the directory are inside the root: the init
		// finds them once it is there (symbolic links in the root point
		// into it, not into ours).
		if !filepath.IsAbs(spec.Root) {
			return nil, fmt.Errorf("starting job: root directory %q is not an absolute path", spec.Root)
		}
		if st, err := os.Stat(spec.Root); err != nil {
			return nil, fmt.Errorf("starting job: root directory: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("starting job: root directory %s is not a directory", spec.Root)
		}
	} else {
		var err error
		// As the caller: a root daemon must not tell a user which of
		// root's files exist (issue 10).
		var cred *nsinit.Credential
		if root && spec.UID != 0 {
			cred = &nsinit.Credential{UID: spec.UID, GID: spec.GID, Groups: spec.Groups}
		}
		path, err = nsinit.LookPathAs(spec.Argv[0], pathOf(spec.Env), spec.Dir, cred)
		if err != nil {
			return nil, fmt.Errorf("starting job: %w", err)
		}
		if st, err := os.Stat(spec.Dir); err != nil {
			return nil, fmt.Errorf("starting job: working directory: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("starting job: working directory %s is not a directory", spec.Dir)
		}
	}

	j := &Job{id: spec.ID, root: spec.Root, done: make(chan struct{}), exited: make(chan struct{})}
	j.trace("checked")
	var warm *warmInit
	if spec.Pool != nil && spec.Pool.serves(spec) {
		warm = spec.Pool.take()
	}
	if warm == nil && spec.Cgroup {
		j.makeCgroup(spec, log)
	}
	j.trace("cgroup created")
	childFiles, err := j.setupStdio(spec)
	if err != nil {
		if warm != nil {
			spec.Pool.discardAsync(warm)
		}
		j.abort()
		return nil, err
	}
	j.trace("stdio")
	j.shim = spec.Namespaces || j.cg != nil || warm != nil || spec.Root != ""

	switch {
	case warm != nil:
		err = j.startWarm(ctx, spec, path, root, childFiles, warm, log)
		if errors.Is(err, errWarmUnused) {
			// The init was gone before it got the job: start cold, once
			// its cgroup (which may have the job's name) is gone.
			log.Debug("the ready init is gone; starting the job's own", "err", err)
			spec.Pool.discard(warm)
			j.cg, j.cmd, j.reaper = nil, nil, nil
			j.makeCgroup(spec, log)
			j.shim = true
			err = j.startShim(ctx, spec, path, root, childFiles, log)
		}
	case !j.shim:
		err = j.startDirect(spec, path, root, childFiles)
	default:
		err = j.startShim(ctx, spec, path, root, childFiles, log)
		if spec.Namespaces && spec.Net == nil && isNamespaceRefusal(err) {
			log.Warn("the kernel refused new namespaces: running the job without them; it cannot migrate", "err", err)
			spec.Namespaces = false
			err = j.startShim(ctx, spec, path, root, childFiles, log)
		}
	}
	for _, f := range childFiles {
		f.Close()
	}
	if err != nil {
		j.abort()
		return nil, err
	}
	j.namespaced = spec.Namespaces
	j.migratable = spec.Namespaces && j.cg != nil
	j.trace("Start returns")
	go j.wait(log)
	return j, nil
}

func (j *Job) makeCgroup(spec Spec, log *slog.Logger) {
	cg, err := newCgroup(spec.CgroupParent, spec.ID)
	if err != nil {
		log.Warn("cannot create a cgroup: running the job without one; it cannot migrate", "err", err)
		return
	}
	j.cg = cg
}

func isNamespaceRefusal(err error) bool {
	var se *startError
	return errors.As(err, &se) && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC))
}

// startError marks a failure to start the init process itself.
type startError struct{ err error }

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

func pathOf(env []string) string {
	p := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			p = v // the last one wins, as exec.Cmd passes only that one
		}
	}
	return p
}

func checkCredentials(spec Spec, root bool) error {
	if root {
		return nil
	}
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if spec.UID != uid || spec.GID != gid {
		return fmt.Errorf("%w: the daemon runs as uid %d gid %d and cannot start jobs as uid %d gid %d; run the daemon as root", ErrPermission, uid, gid, spec.UID, spec.GID)
	}
	if len(spec.Groups) > 0 {
		own, _ := os.Getgroups()
		for _, g := range spec.Groups {
			if g != gid && !slices.Contains(own, int(g)) {
				return fmt.Errorf("%w: the daemon is not in group %d and is not root", ErrPermission, g)
			}
		}
	}
	return nil
}

func (spec Spec) credential() *syscall.Credential {
	groups := spec.Groups
	if groups == nil {
		groups = []uint32{} // setgroups([]): never leak the daemon's groups
	}
	return &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: groups}
}

// setupStdio creates the job's stdio and returns the child's ends (stdin,
// stdout, stderr), which the caller closes once the job has started.
func (j *Job) setupStdio(spec Spec) ([]*os.File, error) {
	if spec.LogPath != "" {
		lf, err := os.OpenFile(spec.LogPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("opening the job's log: %w", err)
		}
		j.logFile = lf
	}
	if spec.TTY {
		master, slave, err := pty.Open()
		if err != nil {
			return nil, fmt.Errorf("allocating a pseudo-terminal: %w", err)
		}
		j.tty = master
		j.closers = append(j.closers, master)
		if err := giveTTY(slave, spec); err != nil {
			slave.Close()
			return nil, err
		}
		if spec.Rows > 0 || spec.Cols > 0 {
			if err := setWinsize(master, spec.Rows, spec.Cols); err != nil {
				slave.Close()
				return nil, fmt.Errorf("setting the terminal size: %w", err)
			}
		}
		j.stdin = &ttyInput{f: master}
		j.stderr = strings.NewReader("")
		if j.logFile != nil {
			j.stdout = strings.NewReader("")
			j.copyDone = make(chan struct{})
			go func() {
				defer close(j.copyDone)
				_, _ = io.Copy(j.logFile, ttyOutput{master})
				j.logFile.Close()
			}()
		} else {
			j.stdout = ttyOutput{master}
		}
		return []*os.File{slave, slave, slave}, nil
	}
	if j.logFile != nil {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", os.DevNull, err)
		}
		j.stdin = errWriter{fmt.Errorf("%w: the job is detached and has no stdin", ErrNotSupported)}
		j.stdout, j.stderr = strings.NewReader(""), strings.NewReader("")
		return []*os.File{null, j.logFile, j.logFile}, nil
	}
	var child []*os.File
	for i := range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range child {
				f.Close()
			}
			return nil, fmt.Errorf("creating the job's pipes: %w", err)
		}
		if i == 0 {
			child = append(child, r)
			j.stdin = w
			j.closers = append(j.closers, w)
		} else {
			child = append(child, w)
			j.closers = append(j.closers, r)
			if i == 1 {
				j.stdout = r
			} else {
				j.stderr = r
			}
		}
	}
	return child, nil
}

func (j *Job) startDirect(spec Spec, path string, root bool, stdio []*os.File) error {
	sys := &syscall.SysProcAttr{}
	if spec.TTY {
		sys.Setsid, sys.Setctty, sys.Ctty = true, true, 0
	} else {
		sys.Setpgid = true
	}
	if root {
		sys.Credential = spec.credential()
	}
	j.cmd = &exec.Cmd{
		Path: path, Args: spec.Argv, Env: spec.Env, Dir: spec.Dir,
		Stdin: stdio[0], Stdout: stdio[1], Stderr: stdio[2],
		SysProcAttr: sys,
	}
	if err := j.cmd.Start(); err != nil {
		switch {
		case errors.Is(err, syscall.EACCES) && sys.Credential != nil && !nsinit.CanEnter(spec.Dir, nsinit.Credential{UID: spec.UID, GID: spec.GID, Groups: spec.Groups}):
			return fmt.Errorf("starting job: uid %d cannot enter the working directory %s: %w", spec.UID, spec.Dir, err)
		case errors.Is(err, syscall.ENOENT):
			return fmt.Errorf("starting job: %w: %w", ErrNotFound, err)
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR):
			return fmt.Errorf("starting job: %w: %w", ErrNotExecutable, err)
		}
		return fmt.Errorf("starting job: %w", err)
	}
	j.pid, j.mainPid = j.cmd.Process.Pid, j.cmd.Process.Pid
	return nil
}

// startShim starts the command under nsinit and waits until it runs.
func (j *Job) startShim(ctx context.Context, spec Spec, path string, root bool, stdio []*os.File, log *slog.Logger) error {
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("starting job: creating the status pipe: %w", err)
	}
	gateR, gateW, err := os.Pipe()
	if err != nil {
		statusR.Close()
		statusW.Close()
		return fmt.Errorf("starting job: creating the start gate: %w", err)
	}
	opts := nsinit.Options{Path: path, Dir: spec.Dir, Root: spec.Root, StatusFD: 3, SyncFD: 4, NoCtty: !spec.TTY}
	if root {
		opts.Cred = &nsinit.Credential{UID: spec.UID, GID: spec.GID, Groups: spec.Groups}
	}
	sys := &syscall.SysProcAttr{Setsid: true}
	if spec.Namespaces {
		sys.Cloneflags = jobCloneflags
		if spec.Hostname != "" {
			sys.Cloneflags |= syscall.CLONE_NEWUTS
			opts.Hostname = spec.Hostname
		}
		if spec.Net != nil {
			sys.Cloneflags |= syscall.CLONE_NEWNET
		}
	}
	newCmd := func() *exec.Cmd {
		return &exec.Cmd{
			Path: spec.InitPath,
			Args: append([]string{"ssi", nsinit.Command}, opts.Args(spec.Argv)...),
			Env:  spec.Env, Dir: "/",
			Stdin: stdio[0], Stdout: stdio[1], Stderr: stdio[2],
			ExtraFiles:  []*os.File{statusW, gateR},
			SysProcAttr: sys,
		}
	}
	var inCgroup bool
	j.cmd, inCgroup, err = startInCgroup(newCmd, j.cg)
	statusW.Close()
	gateR.Close()
	if err != nil {
		statusR.Close()
		gateW.Close()
		return &startError{fmt.Errorf("starting job: starting the init %s: %w", spec.InitPath, err)}
	}
	j.pid = j.cmd.Process.Pid
	j.trace("init forked")

	if j.cg != nil && !inCgroup {
		if err := j.cg.add(j.pid); err != nil {
			log.Warn("cannot move the job into its cgroup: running it without one; it cannot migrate", "err", err)
			if derr := j.cg.destroy(); derr != nil {
				log.Warn("removing the unused cgroup", "err", derr)
			}
			j.cg = nil
		}
	}
	j.trace("cgroup joined")
	if spec.Namespaces && spec.Net != nil {
		if err := spec.Net(j.pid); err != nil {
			statusR.Close()
			gateW.Close()
			_ = j.cmd.Process.Kill()
			_ = j.reap()
			return fmt.Errorf("starting job: its network: %w", err)
		}
		j.trace("network")
	}
	j.events = make(chan nsinit.Event, 4)
	go readEvents(statusR, j.events, log, j.trace)
	_, err = gateW.Write([]byte{1})
	gateW.Close()
	if err != nil {
		// The init died before it could start the command: its exit
		// status or report below says why.
		log.Debug("opening the start gate", "err", err)
	}

	return j.awaitStart(ctx, spec, log)
}

// errWarmUnused: the ready init was not given the job (it was gone, or the
// job cannot be handed over): the job starts cold, which reports any error.
var errWarmUnused = errors.New("the ready init did not get the job")

// startWarm hands the command to a ready init of the pool and waits until it
// runs.
func (j *Job) startWarm(ctx context.Context, spec Spec, path string, root bool, stdio []*os.File, w *warmInit, log *slog.Logger) error {
	opts := nsinit.Options{Path: path, Dir: spec.Dir, Root: spec.Root, NoCtty: !spec.TTY}
	if root {
		opts.Cred = &nsinit.Credential{UID: spec.UID, GID: spec.GID, Groups: spec.Groups}
	}
	// What os/exec does to the environment of a cold init, which passes
	// its own on.
	env, err := dedupEnv(spec.Env)
	if err != nil {
		return fmt.Errorf("%w: %v", errWarmUnused, err)
	}
	if w.reniced {
		// Back to the weight of any new session before the job runs.
		if err := setAutogroupNice(w.cmd.Process.Pid, 0); err != nil {
			return fmt.Errorf("%w: %v", errWarmUnused, err)
		}
	}
	// Named after the job (where the hierarchy allows) before anything of
	// the job runs in it.
	w.cg.rename(spec.ID)
	if err := nsinit.SendJob(w.conn, opts.Args(spec.Argv), env, [3]*os.File{stdio[0], stdio[1], stdio[2]}); err != nil {
		return fmt.Errorf("%w: %v", errWarmUnused, err)
	}
	// From here the job owns the init and its cgroup (a failed start
	// removes it), except when it falls back to a cold start.
	j.cmd, j.pid, j.cg = w.cmd, w.cmd.Process.Pid, w.cg
	j.reaper = func() error { <-w.exited; return w.waitErr }
	j.trace("job handed over")
	j.events = make(chan nsinit.Event, 4)
	go readEvents(w.conn, j.events, log, j.trace)
	// An init that ends before it says it has the job never ran it (it
	// was killed while it waited): the job can still start cold.
	select {
	case e, ok := <-j.events:
		if !ok {
			_ = j.reap()
			return fmt.Errorf("%w: it ended before it took the job", errWarmUnused)
		}
		if e.Kind != nsinit.Accepted {
			_ = j.cmd.Process.Kill()
			_ = j.reap()
			return fmt.Errorf("starting job: the ready init said %q instead of taking the job", e)
		}
	case <-ctx.Done():
		_ = j.cmd.Process.Kill()
		_ = j.reap()
		return fmt.Errorf("starting job: %w", ctx.Err())
	}
	j.warm = true
	return j.awaitStart(ctx, spec, log)
}

// reap waits for the top process to exit.
func (j *Job) reap() error {
	if j.reaper != nil {
		return j.reaper()
	}
	return j.cmd.Wait()
}

// awaitStart waits for the init's report that the command runs.
func (j *Job) awaitStart(ctx context.Context, spec Spec, log *slog.Logger) error {
	select {
	case e, ok := <-j.events:
		switch {
		case ok && e.Kind == nsinit.Started:
			if !spec.Namespaces {
				j.mainPid = e.Pid
			} else if hp, err := hostPidOf(j.pid, e.Pid); err == nil {
				j.mainPid = hp
			} else {
				// Already exited (and reaped by the init), or /proc lacks
				// the children files: SIGKILL/SIGSTOP then go to the init.
				log.Debug("finding the job's host PID", "err", err)
			}
			return nil
		case ok && e.Kind == nsinit.Failed:
			_ = j.reap()
			switch e.Reason {
			case nsinit.ReasonNotFound:
				return fmt.Errorf("starting job: %w: %s", ErrNotFound, e.Message)
			case nsinit.ReasonNotExecutable:
				return fmt.Errorf("starting job: %w: %s", ErrNotExecutable, e.Message)
			}
			return fmt.Errorf("starting job: the init could not set it up: %s", e.Message)
		default:
			werr := j.reap()
			if werr == nil {
				werr = errors.New("exit status 0")
			}
			return fmt.Errorf("starting job: the init %s ended without starting the command (is it an ssi binary that runs %q?): %w", spec.InitPath, nsinit.Command, werr)
		}
	case <-ctx.Done():
		_ = j.cmd.Process.Kill()
		_ = j.reap()
		return fmt.Errorf("starting job: %w", ctx.Err())
	}
}

// dedupEnv is os/exec's: later values win, entries with a NUL are an error.
func dedupEnv(env []string) ([]string, error) {
	var err error
	out := make([]string, 0, len(env))
	saw := make(map[string]bool, len(env))
	for n := len(env); n > 0; n-- {
		kv := env[n-1]
		if strings.IndexByte(kv, 0) != -1 {
			err = errors.New("exec: environment variable contains NUL")
			continue
		}
		i := strings.Index(kv, "=")
		if i == 0 {
			i = strings.Index(kv[1:], "=") + 1
		}
		if i < 0 {
			if kv != "" {
				out = append(out, kv)
			}
			continue
		}
		k := kv[:i]
		if saw[k] {
			continue
		}
		saw[k] = true
		out = append(out, kv)
	}
	slices.Reverse(out)
	return out, err
}

func readEvents(r io.ReadCloser, out chan<- nsinit.Event, log *slog.Logger, trace func(string)) {
	defer close(out)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		e, err := nsinit.ParseEvent(sc.Text())
		if err != nil {
			log.Warn("ignoring a status report from the init", "err", err)
			continue
		}
		if tracePhase != nil {
			trace(string(e.Kind) + " event read")
		}
		out <- e
	}
	trace("status pipe EOF")
}

// abort releases what a failed Start had set up.
func (j *Job) abort() {
	if j.cg != nil {
		if err := j.cg.destroy(); err != nil {
			slog.Warn("removing the cgroup of a job that did not start", "job", j.id, "err", err)
		}
	}
	_ = j.Close() // ends the TTY log copier, which closes the log
	if j.copyDone != nil {
		<-j.copyDone
	} else if j.logFile != nil {
		j.logFile.Close()
	}
}

// copyGrace bounds how long Wait waits for the output of a detached TTY job
// to reach its log after the job exited (a process the job left behind may
// keep the terminal open forever).
const copyGrace = 2 * time.Second

// wait collects the job's exit status and cleans up.
func (j *Job) wait(log *slog.Logger) {
	var st Status
	final := false
	if j.shim {
		// The init's final report comes once the command and whatever it
		// left behind have ended; the init's own exit follows.
		for e := range j.events {
			switch e.Kind {
			case nsinit.Exited:
				st, final = Status{Code: e.Code}, true
			case nsinit.Killed:
				st, final = Status{Signal: e.Signal, Core: e.Core}, true
			default:
				continue
			}
			j.setExited(st, nil)
		}
	}
	err := j.reap()
	j.trace("top process reaped")
	var werr error
	var ee *exec.ExitError
	var ws syscall.WaitStatus
	haveWS := false
	if j.cmd.ProcessState != nil {
		ws, haveWS = j.cmd.ProcessState.Sys().(syscall.WaitStatus)
	}
	if err != nil && !errors.As(err, &ee) {
		werr = fmt.Errorf("waiting for job %s: %w", j.id, err)
	}
	switch {
	case !haveWS:
		werr = errors.Join(werr, fmt.Errorf("waiting for job %s: no wait status", j.id))
	case !j.shim:
		st = statusOf(ws)
	case !final:
		// The init itself died (SIGKILL, OOM killer): the command
		// died with it, of the same signal if it was one.
		st = statusOf(ws)
		if !ws.Signaled() {
			werr = errors.Join(werr, fmt.Errorf("job %s: the init exited with code %d without reporting the command's status", j.id, ws.ExitStatus()))
		}
	}
	if !final {
		j.setExited(st, werr)
	} else if werr != nil {
		log.Warn("after the job's end", "err", werr)
	}
	j.trace("status pipe closed")
	if j.cg != nil {
		j.cgMu.Lock()
		if err := j.cg.destroy(); err != nil {
			log.Warn("removing the job's cgroup", "err", err)
		}
		j.cgGone = true
		j.cgMu.Unlock()
		j.trace("cgroup removed")
	}
	if j.copyDone != nil {
		select {
		case <-j.copyDone:
		case <-time.After(copyGrace):
			log.Warn("the job's terminal is still open after it exited; its log may miss later output")
		}
	}
	if j.logFile != nil && j.copyDone == nil {
		j.logFile.Close()
	}
	j.status, j.waitErr = st, werr
	close(j.done)
}

func (j *Job) setExited(st Status, err error) {
	select {
	case <-j.exited:
		return // once
	default:
	}
	j.exitStatus, j.exitErr = st, err
	close(j.exited)
}

// giveTTY makes a job's terminal its user's, as login(1) does: owned by
// the job's user, group tty, mode 0620 (a root daemon's pty is root's
// otherwise, and the user could not open its own terminal).
func giveTTY(slave *os.File, spec Spec) error {
	if os.Geteuid() != 0 || spec.UID == 0 {
		return nil
	}
	gid := int(spec.GID)
	if g, err := user.LookupGroup("tty"); err == nil {
		if n, err := strconv.Atoi(g.Gid); err == nil {
			gid = n
		}
	}
	if err := slave.Chown(int(spec.UID), gid); err != nil {
		return fmt.Errorf("giving the terminal to uid %d: %w", spec.UID, err)
	}
	if err := slave.Chmod(0o620); err != nil {
		return fmt.Errorf("giving the terminal to uid %d: %w", spec.UID, err)
	}
	return nil
}
