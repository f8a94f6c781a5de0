package rexec

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A running job: what it is, and what can be done to it (signals, freezing,
// its processes and their use, its terminal).

// Exited is closed as soon as the job's exit status is known: the command
// and every process it left behind have ended (under nsinit the init killed
// and reaped them before it reported). The init's own exit, the removal of
// the cgroup and, for a detached job on a terminal, the last copy into the
// log may still be under way: Done is closed when they are over.
func (j *Job) Exited() <-chan struct{} { return j.exited }

// ExitStatus returns the job's status once Exited is closed, with the
// engine's error known by then (Wait has the final word on errors).
func (j *Job) ExitStatus() (Status, error) {
	<-j.exited
	return j.exitStatus, j.exitErr
}

// ID returns the job's ID (Spec.ID, or the generated one).
func (j *Job) ID() string { return j.id }

// Pid returns the host PID of the job's top process: the init for a job
// under nsinit, else the command itself.
func (j *Job) Pid() int { return j.pid }

// MainPid returns the host PID of the command; 0 if it exited before the
// engine could learn it.
func (j *Job) MainPid() int { return j.mainPid }

// Migratable reports whether the job runs in its own PID namespace and
// cgroup, which migration (checkpoint/restore) needs. False when either was
// not requested or not available.
func (j *Job) Migratable() bool { return j.migratable }

// Root is the job's root directory (Spec.Root): "" when it has the node's.
func (j *Job) Root() string { return j.root }

// Namespaced reports whether the job runs in new PID+mount namespaces.
func (j *Job) Namespaced() bool { return j.namespaced }

// CgroupPaths returns the job's cgroup directories (one per v1 hierarchy,
// or one for v2); nil without a cgroup.
func (j *Job) CgroupPaths() []string {
	if j.cg == nil {
		return nil
	}
	return slices.Clone(j.cg.dirs)
}

// Stdin returns the writer to the job's stdin. Closing it gives the job EOF;
// with TTY it sends the terminal's EOF character (^D), which ends input only
// at the start of a line and only while the terminal is in canonical mode.
func (j *Job) Stdin() io.WriteCloser { return j.stdin }

// Stdout returns the job's stdout (with TTY, the terminal's whole output).
// The engine does not buffer: the job blocks when the reader falls behind.
func (j *Job) Stdout() io.Reader { return j.stdout }

// Stderr returns the job's stderr; empty with TTY or LogPath.
func (j *Job) Stderr() io.Reader { return j.stderr }

// Resize sets the job's terminal size (the job gets SIGWINCH).
func (j *Job) Resize(rows, cols uint16) error {
	if j.tty == nil {
		return fmt.Errorf("resizing job %s: %w: it has no terminal", j.id, ErrNotSupported)
	}
	if err := setWinsize(j.tty, rows, cols); err != nil {
		return fmt.Errorf("resizing job %s: %w", j.id, err)
	}
	return nil
}

// Done is closed when the job has ended and Wait no longer blocks.
func (j *Job) Done() <-chan struct{} { return j.done }

// Wait waits for the job to end and returns its status. The error reports
// a failure of the engine, not of the job. Wait may be called many times.
func (j *Job) Wait() (Status, error) {
	<-j.done
	return j.status, j.waitErr
}

func (j *Job) finished() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the job's process group; see the package comment.
func (j *Job) Signal(sig syscall.Signal) error {
	if j.finished() {
		return fmt.Errorf("signalling job %s: %w", j.id, ErrFinished)
	}
	var err error
	switch {
	case !j.shim:
		err = syscall.Kill(-j.pid, sig)
	case (sig == syscall.SIGKILL || sig == syscall.SIGSTOP || sig == syscall.SIGPIPE) && j.mainPid > 0:
		// SIGPIPE too: the init receives one sent with kill(2) but never
		// forwards it (strace shows it arrive and no kill(2) follow; why is
		// not known yet), and a job whose reader went away must get it
		// (procspace, passed stdio).
		err = syscall.Kill(-j.mainPid, sig)
	default:
		// The init forwards it; SIGKILL to an init that is PID 1 kills
		// the whole namespace.
		err = syscall.Kill(j.pid, sig)
	}
	if errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling job %s: %w", j.id, ErrFinished)
	}
	if err != nil {
		return fmt.Errorf("signalling job %s with %v: %w", j.id, sig, err)
	}
	return nil
}

// Freeze stops every process of the job (cgroup freezer) and returns once
// the kernel reports them frozen. The job needs a cgroup.
func (j *Job) Freeze() error { return j.setFrozen(true) }

// Thaw resumes a frozen job.
func (j *Job) Thaw() error { return j.setFrozen(false) }

func (j *Job) setFrozen(frozen bool) error {
	what := map[bool]string{true: "freezing", false: "thawing"}[frozen]
	if j.cg == nil {
		return fmt.Errorf("%s job %s: %w: it has no cgroup (Spec.Cgroup, as root)", what, j.id, ErrNotSupported)
	}
	j.cgMu.Lock()
	defer j.cgMu.Unlock()
	if j.cgGone {
		return fmt.Errorf("%s job %s: %w", what, j.id, ErrFinished)
	}
	if err := j.cg.setFrozen(frozen); err != nil {
		return fmt.Errorf("%s job %s: %w", what, j.id, err)
	}
	return nil
}

// Pids returns the host PIDs of the job's processes, sorted: the command and
// everything it forked, without the init. With a cgroup they come from the
// cgroup; otherwise from walking /proc (the descendants of the top process
// and the members of the job's process group). Nil once the job has ended.
func (j *Job) Pids() []int {
	if j.finished() {
		return nil
	}
	if j.cg != nil {
		j.cgMu.Lock()
		pids, err := j.cg.procs()
		gone := j.cgGone
		j.cgMu.Unlock()
		if gone {
			return nil
		}
		if err == nil {
			return slices.DeleteFunc(pids, func(p int) bool { return p == j.pid })
		}
	}
	t := readProcTable()
	if j.shim {
		return t.descendants(j.pid, 0)
	}
	pids := t.descendants(j.pid, j.pid)
	if _, alive := t[j.pid]; alive {
		pids = append(pids, j.pid)
		slices.Sort(pids)
	}
	return pids
}

// Usage is the resource use of a job's processes, for ps.
type Usage struct {
	Procs      int           // number of processes
	CPUPercent float64       // CPU time over the job's lifetime, percent of one CPU
	CPUTime    time.Duration // user + system time of the live processes
	RSS        uint64        // sum of resident set sizes, bytes
	Start      time.Time     // start of the command
	State      string        // state letter of the command (R, S, D, T, Z, ...)
}

// Usage reads the resource use of the job's live processes from /proc.
// CPU time of processes that already exited is not included.
func (j *Job) Usage() (Usage, error) {
	pids := j.Pids()
	if pids == nil && j.finished() {
		return Usage{}, fmt.Errorf("reading the usage of job %s: %w", j.id, ErrFinished)
	}
	var u Usage
	main := false
	for _, pid := range pids {
		p, err := ReadProc(pid)
		if err != nil {
			continue // exited meanwhile
		}
		u.Procs++
		u.CPUTime += p.CPUTime
		u.RSS += p.RSS
		// State and start are the command's, else the oldest process's.
		switch {
		case pid == j.mainPid:
			u.State, u.Start, main = p.State, p.Start, true
		case !main && (u.Start.IsZero() || p.Start.Before(u.Start)):
			u.State, u.Start = p.State, p.Start
		}
	}
	if u.Procs == 0 {
		return u, fmt.Errorf("reading the usage of job %s: none of its processes could be read", j.id)
	}
	if life := time.Since(u.Start); life > 0 {
		u.CPUPercent = 100 * u.CPUTime.Seconds() / life.Seconds()
	}
	return u, nil
}

// Close releases the parent's ends of the job's stdio (and its terminal).
// It does not stop the job; a job still writing then gets EPIPE/SIGPIPE.
func (j *Job) Close() error {
	var errs []error
	j.closeOnce.Do(func() {
		for _, c := range j.closers {
			if err := c.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
				errs = append(errs, err)
			}
		}
	})
	return errors.Join(errs...)
}

// ttyOutput reads a pty master; the EIO that Linux returns once every
// process has closed the terminal is the end of the output.
type ttyOutput struct{ f *os.File }

func (t ttyOutput) Read(p []byte) (int, error) {
	n, err := t.f.Read(p)
	if errors.Is(err, syscall.EIO) {
		err = io.EOF
	}
	return n, err
}

// ttyInput writes to a pty master; Close sends the EOF character.
type ttyInput struct {
	f      *os.File
	mu     sync.Mutex
	closed bool
}

func (t *ttyInput) Write(p []byte) (int, error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return 0, os.ErrClosed
	}
	return t.f.Write(p)
}

func (t *ttyInput) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	eof := byte(4) // ^D
	_ = control(t.f, func(fd int) error {
		tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err == nil && tio.Cc[unix.VEOF] != 0 {
			eof = tio.Cc[unix.VEOF]
		}
		return err
	})
	_, err := t.f.Write([]byte{eof})
	if errors.Is(err, syscall.EIO) || errors.Is(err, os.ErrClosed) {
		err = nil // nobody is reading any more
	}
	return err
}

// control runs fn on f's descriptor without taking it out of the runtime's
// poller (os.File.Fd would make it blocking, and a blocked Read could then
// never be interrupted by Close).
func control(f *os.File, fn func(fd int) error) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := sc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func setWinsize(f *os.File, rows, cols uint16) error {
	return control(f, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }
func (w errWriter) Close() error              { return nil }
