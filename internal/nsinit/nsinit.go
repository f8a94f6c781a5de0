// Package nsinit is a minimal init: it runs one command (the job) as its only
// direct child, forwards the signals it receives to the job's process group,
// reaps every orphan that is re-parented to it, and exits with the job's
// status. It is meant to run as PID 1 of a job's PID namespace (where a plain
// program would ignore SIGTERM/SIGINT and leave zombies behind), and it works
// just as well without namespaces, as a child subreaper. It is generic: it
// knows nothing about clusters, RPC or cgroups, and it is also what `ssi up
// --isolate` runs at the top of an isolated node.
//
// # Re-exec contract
//
// The ssi binary re-executes itself to become the init:
//
//	ssi __init [FLAGS] -- CMD [ARGS...]
//
// Main receives everything after the command name (Command, "__init"). Options.Args
// builds that list, so callers never spell the flags themselves. The flags are:
//
//	-path P         executable to run; default: CMD looked up in $PATH (the
//	                init's own environment, which is passed to the job untouched)
//	-dir D          working directory of the job (chdir happens after the
//	                credentials are switched, so it is checked as the job's user)
//	-uid N -gid N   credentials of the job; -groups 1,2,3 its supplementary groups
//	                (setgroups is always called when -uid/-gid is given, so the
//	                init's own groups never leak into the job)
//	-mount-proc     make every mount private (recursively), then mount a fresh
//	                /proc; refused unless the init is in a mount namespace of its
//	                own (it would otherwise hide the host's /proc)
//	-private-mounts make every mount private (recursively) without mounting /proc;
//	                refused unless in a mount namespace of its own
//	-hostname H     set the hostname; refused unless in a UTS namespace of its own
//	-root R         chroot to R (after the namespaces are set up, before the
//	                credentials are switched), then chdir to /; -dir and the
//	                command's lookup are then relative to R
//	-status-fd N    write status events (see below) to fd N
//	-sync-fd N      read one byte from fd N before starting the job (the parent uses
//	                this gate to place the init in a cgroup, or anything else that
//	                must happen before the job runs); EOF aborts with exit 125
//	-no-ctty        never make stdin the job's controlling terminal
//	-pool-fd N      warm mode (see below): prepare the namespace, then wait for the
//	                job on the unix socket N; -- CMD is not given
//
// Descriptors 0, 1 and 2 are passed to the job; the status and sync
// descriptors are marked close-on-exec so the job never sees them. Every other
// descriptor the init inherited is inherited by the job as well, so the parent
// should pass only what it means to (os/exec does that).
//
// # Process groups and terminals
//
// The job always leads a process group of its own. If stdin is a terminal (and
// -no-ctty is not given) the job instead becomes a session leader with that
// terminal as its controlling terminal (setsid + TIOCSCTTY); the parent must
// then not hold the terminal as its own controlling terminal (open it with
// O_NOCTTY and start the init with Setsid).
//
// # Signals
//
// Every catchable signal the init receives is sent to the job's process group,
// except SIGCHLD (used for reaping) and SIGURG (the Go runtime uses it
// internally for preemption, so a forwarded one could be spurious). Signals
// received before the job started are forwarded once it has. SIGKILL and
// SIGSTOP cannot be caught: a parent that wants them to reach the job sends
// them to the job's process group directly; sending SIGKILL to an init that is
// PID 1 kills the whole namespace.
//
// # Exit status
//
// When the job's process exits, the init kills whatever the job left behind
// (as PID 1 with kill(-1, SIGKILL), otherwise every process re-parented to it,
// repeatedly, until it has no children left), reaps it, and exits: with the
// job's exit code, or with 128+N if the job died of signal N. A PID 1 cannot
// die of its own signal, so the init never re-raises; the real signal (and
// whether a core was dumped) is written to the status descriptor instead. The
// init's own failures exit 127 (command not found), 126 (not executable) or
// 125 (anything else, e.g. a refused flag).
//
// Status events are single text lines (see Event):
//
//	ready                warm mode: set up, waiting for the job
//	accepted             warm mode: the job was received (a parent that gets EOF
//	                     before this knows the job never ran)
//	started PID          the job runs, PID as seen by the init (2 in a new PID namespace)
//	exited CODE          the job exited with CODE
//	killed SIG [core]    the job died of signal SIG
//	failed REASON MSG    the job could not be started; REASON is notfound, noexec or setup
//
// A parent that gets EOF without a final event knows that the init itself died
// (for instance of SIGKILL) and must take the status from waiting on the init.
//
// When the init reports to a status descriptor, it lets go of the job's stdio
// as soon as the job runs (descriptors 0, 1 and 2 become /dev/null), so that
// the job's output ends when the job and what it left behind end, not when
// the init has finished exiting.
//
// # Warm mode
//
// Started with -pool-fd N (and the namespace flags -mount-proc,
// -private-mounts, but no command), the init does everything that does not
// depend on the job — it is PID 1 of its namespaces, /proc is mounted — then
// writes "ready" to the socket N and waits. The parent (rexec's pool) places
// it in a cgroup and later sends one job with SendJob: the flags of the job
// (-path, -dir, -root, -uid, -gid, -groups, -no-ctty, -- CMD...), its environment and
// its three stdio descriptors. From then on the init behaves as above, with
// the socket as its status descriptor. EOF on the socket before a job came,
// or SIGTERM, SIGINT, SIGHUP or SIGQUIT while it waits, ends it; other
// signals that arrive while it waits are dropped, not forwarded to the job.
package nsinit

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Command is the hidden command name under which the ssi binary runs Main.
const Command = "__init"

// Exit codes of the init's own failures (the shell's conventions).
const (
	ExitSetup         = 125 // the init could not prepare the job's environment
	ExitNotExecutable = 126 // the command exists but cannot be executed
	ExitNotFound      = 127 // the command does not exist
)

// Credential is the identity the job runs under.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

// Options configure the init. The zero value runs the job with the init's own
// credentials, in the init's own namespaces, without status reporting.
type Options struct {
	Path          string      // executable; empty: look up argv[0] in $PATH
	Dir           string      // working directory of the job; empty: the init's
	Cred          *Credential // nil: the init's own credentials
	MountProc     bool        // make mounts one-way (slave, inherited FUSE mounts let go) and mount a fresh /proc
	PrivateMounts bool        // make mounts one-way (slave, inherited FUSE mounts let go)
	Hostname      string      // set the hostname (needs a UTS namespace)
	Root          string      // chroot here before the job starts; Dir and Path are then inside it
	StatusFD      int         // status events go here; < 3 means none
	SyncFD        int         // wait for one byte here before starting; < 3 means none
	NoCtty        bool        // never make stdin the controlling terminal
	PoolFD        int         // warm mode: wait for the job on this socket; < 3 means none
}

// Args returns the arguments Main expects (everything after Command) to run
// argv with these options.
func (o Options) Args(argv []string) []string {
	var a []string
	if o.Path != "" {
		a = append(a, "-path", o.Path)
	}
	if o.Dir != "" {
		a = append(a, "-dir", o.Dir)
	}
	if o.Cred != nil {
		a = append(a, "-uid", strconv.FormatUint(uint64(o.Cred.UID), 10),
			"-gid", strconv.FormatUint(uint64(o.Cred.GID), 10))
		if len(o.Cred.Groups) > 0 {
			gs := make([]string, len(o.Cred.Groups))
			for i, g := range o.Cred.Groups {
				gs[i] = strconv.FormatUint(uint64(g), 10)
			}
			a = append(a, "-groups", strings.Join(gs, ","))
		}
	}
	if o.MountProc {
		a = append(a, "-mount-proc")
	}
	if o.PrivateMounts {
		a = append(a, "-private-mounts")
	}
	if o.Hostname != "" {
		a = append(a, "-hostname", o.Hostname)
	}
	if o.Root != "" {
		a = append(a, "-root", o.Root)
	}
	if o.StatusFD >= 3 {
		a = append(a, "-status-fd", strconv.Itoa(o.StatusFD))
	}
	if o.SyncFD >= 3 {
		a = append(a, "-sync-fd", strconv.Itoa(o.SyncFD))
	}
	if o.NoCtty {
		a = append(a, "-no-ctty")
	}
	if o.PoolFD >= 3 {
		a = append(a, "-pool-fd", strconv.Itoa(o.PoolFD))
	}
	a = append(a, "--")
	return append(a, argv...)
}

// parseArgs is the inverse of Options.Args.
func parseArgs(args []string) (Options, []string, error) {
	o := Options{StatusFD: -1, SyncFD: -1}
	fl := flag.NewFlagSet(Command, flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.StringVar(&o.Path, "path", "", "")
	fl.StringVar(&o.Dir, "dir", "", "")
	uid := fl.Int64("uid", -1, "")
	gid := fl.Int64("gid", -1, "")
	groups := fl.String("groups", "", "")
	fl.BoolVar(&o.MountProc, "mount-proc", false, "")
	fl.BoolVar(&o.PrivateMounts, "private-mounts", false, "")
	fl.StringVar(&o.Hostname, "hostname", "", "")
	fl.StringVar(&o.Root, "root", "", "")
	fl.IntVar(&o.StatusFD, "status-fd", -1, "")
	fl.IntVar(&o.SyncFD, "sync-fd", -1, "")
	fl.BoolVar(&o.NoCtty, "no-ctty", false, "")
	fl.IntVar(&o.PoolFD, "pool-fd", 0, "")
	if err := fl.Parse(args); err != nil {
		return o, nil, fmt.Errorf("bad arguments: %w (usage: ssi %s [flags] -- CMD [ARGS...])", err, Command)
	}
	argv := fl.Args()
	switch {
	case o.PoolFD >= 3 && len(argv) > 0:
		return o, nil, fmt.Errorf("-pool-fd takes no command: the job comes over the socket")
	case o.PoolFD >= 3 && (o.StatusFD >= 3 || o.SyncFD >= 3):
		return o, nil, fmt.Errorf("-pool-fd replaces -status-fd and -sync-fd")
	case o.PoolFD < 3 && len(argv) == 0:
		return o, nil, fmt.Errorf("no command given (usage: ssi %s [flags] -- CMD [ARGS...])", Command)
	}
	if *uid >= 0 || *gid >= 0 || *groups != "" {
		if *uid < 0 || *gid < 0 || *uid > 1<<32-1 || *gid > 1<<32-1 {
			return o, nil, errors.New("-uid and -gid must be given together, as numbers from 0 to 4294967295")
		}
		c := &Credential{UID: uint32(*uid), GID: uint32(*gid)}
		if *groups != "" {
			for _, g := range strings.Split(*groups, ",") {
				n, err := strconv.ParseUint(g, 10, 32)
				if err != nil {
					return o, nil, fmt.Errorf("-groups %q: %q is not a group id", *groups, g)
				}
				c.Groups = append(c.Groups, uint32(n))
			}
		}
		o.Cred = c
	}
	return o, argv, nil
}

// Main runs the init with args (everything after Command) and returns the
// exit code for the process. It must be called early in main (or TestMain),
// before other goroutines start processes, since it reaps every child.
func Main(args []string) int {
	// Catch everything first: as PID 1 an uncaught signal would be lost, and a
	// signal that arrives before the job runs is forwarded once it does.
	sigs := make(chan os.Signal, 128)
	signal.Notify(sigs)

	opts, argv, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ssi %s: %v\n", Command, err)
		return ExitSetup
	}
	in := &initProc{opts: opts, argv: argv, sigs: sigs}
	return in.run()
}

type initProc struct {
	opts   Options
	argv   []string
	sigs   chan os.Signal
	status *os.File
	pid1   bool
	warm   bool       // the job came over the pool socket
	null   *os.File   // /dev/null, opened before a chroot (which may lack one)
	env    []string   // warm: the job's environment (else the init's own)
	stdio  []*os.File // warm: the job's stdin, stdout, stderr (else the init's own)
}

// report writes an event to the status descriptor, if any. A parent that went
// away cannot be told anything, so write errors are ignored.
func (in *initProc) report(e Event) {
	if in.status == nil {
		return
	}
	_, _ = io.WriteString(in.status, e.String()+"\n")
}

// fail reports a start failure and returns the exit code for it. Without a
// status descriptor the message goes to stderr, which is all a human has.
func (in *initProc) fail(reason, code int, format string, a ...any) int {
	msg := fmt.Sprintf(format, a...)
	if in.status != nil {
		in.report(Event{Kind: Failed, Reason: failReasons[reason], Message: msg})
	} else {
		fmt.Fprintf(os.Stderr, "ssi %s: %s\n", Command, msg)
	}
	return code
}

const (
	reasonSetup = iota
	reasonNotFound
	reasonNoExec
)

var failReasons = []string{reasonSetup: ReasonSetup, reasonNotFound: ReasonNotFound, reasonNoExec: ReasonNotExecutable}

func (in *initProc) run() int {
	in.pid1 = os.Getpid() == 1
	if in.opts.PoolFD >= 3 {
		if code, ok := in.waitForJob(); !ok {
			return code
		}
	}
	if in.opts.StatusFD >= 3 && in.status == nil {
		syscall.CloseOnExec(in.opts.StatusFD)
		in.status = os.NewFile(uintptr(in.opts.StatusFD), "status")
		defer in.status.Close()
	}
	if in.opts.SyncFD >= 3 {
		syscall.CloseOnExec(in.opts.SyncFD)
		gate := os.NewFile(uintptr(in.opts.SyncFD), "sync")
		var b [1]byte
		_, err := io.ReadFull(gate, b[:])
		gate.Close()
		if err != nil {
			return in.fail(reasonSetup, ExitSetup, "waiting for the start signal on fd %d: %v (the parent gave up)", in.opts.SyncFD, err)
		}
	}
	if !in.pid1 {
		// Orphans of the job come to us rather than to the host's init, so
		// they are reaped (and, when the job ends, killed) here.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return in.fail(reasonSetup, ExitSetup, "becoming a child subreaper: %v", err)
		}
	}
	if !in.warm {
		if err := in.setup(); err != nil {
			return in.fail(reasonSetup, ExitSetup, "%v", err)
		}
	}
	if in.opts.Root != "" {
		if err := in.enterRoot(); err != nil {
			return in.fail(reasonSetup, ExitSetup, "%v", err)
		}
	}
	if err := checkDir(in.opts.Dir); err != nil {
		return in.fail(reasonSetup, ExitSetup, "%v", err)
	}

	path, reason, err := in.resolve()
	if err != nil {
		code := ExitNotFound
		if reason == reasonNoExec {
			code = ExitNotExecutable
		}
		return in.fail(reason, code, "%v", err)
	}
	proc, reason, err := in.start(path)
	if err != nil {
		code := ExitSetup
		switch reason {
		case reasonNotFound:
			code = ExitNotFound
		case reasonNoExec:
			code = ExitNotExecutable
		}
		return in.fail(reason, code, "%v", err)
	}
	job := proc.Pid
	_ = proc.Release() // we reap with wait4(-1) ourselves
	if in.status != nil {
		in.releaseStdio()
	}
	in.report(Event{Kind: Started, Pid: job})

	ws := in.supervise(job)
	in.killRemaining()
	switch {
	case ws.Signaled():
		in.report(Event{Kind: Killed, Signal: ws.Signal(), Core: ws.CoreDump()})
		return 128 + int(ws.Signal())
	default:
		in.report(Event{Kind: Exited, Code: ws.ExitStatus()})
		return ws.ExitStatus()
	}
}

// setup prepares mounts and the hostname. The namespace checks come first:
// they read the parent's view of /proc, which -mount-proc replaces.
func (in *initProc) setup() error {
	o := in.opts
	mounts := o.MountProc || o.PrivateMounts
	if mounts {
		own, err := ownNamespace("mnt")
		if err != nil {
			return err
		}
		if !own {
			return errors.New("refusing to change mounts: not in a mount namespace of its own (start the init with CLONE_NEWNS)")
		}
	}
	if o.Hostname != "" {
		own, err := ownNamespace("uts")
		if err != nil {
			return err
		}
		if !own {
			return errors.New("refusing to set the hostname: not in a UTS namespace of its own (start the init with CLONE_NEWUTS)")
		}
	}
	if mounts {
		// Slave, not private: mounts made here stay here, and what the
		// host unmounts goes here too. A private copy would keep every
		// mount the host had when this namespace was made (another
		// process's FUSE mount, say) alive until this namespace ends, and
		// that process's unmount would wait for it.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
			return fmt.Errorf("making mounts one-way (slave): %w", err)
		}
		// On a host whose mounts are private (no systemd) nothing
		// propagates: let go of the FUSE mounts this namespace inherited.
		dropFUSE()
	}
	if o.MountProc {
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting a fresh /proc: %w", err)
		}
	}
	if o.Hostname != "" {
		if err := unix.Sethostname([]byte(o.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname to %q: %w", o.Hostname, err)
		}
	}
	return nil
}

// enterRoot makes the job's root directory the init's own (and so the
// job's): chroot, then chdir into it. It runs as the init's user (root),
// before the job's credentials are taken, and after the namespaces are set
// up (their checks read the parent's /proc).
func (in *initProc) enterRoot() error {
	root := in.opts.Root
	if !filepath.IsAbs(root) {
		return fmt.Errorf("root directory %q is not an absolute path", root)
	}
	if st, err := os.Stat(root); err != nil {
		return fmt.Errorf("root directory: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("root directory %s is not a directory", root)
	}
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		in.null = null
	}
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("changing the root directory to %s: %w", root, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("entering the root directory %s: %w", root, err)
	}
	return nil
}

func checkDir(dir string) error {
	if dir == "" {
		return nil
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("working directory %s is not a directory", dir)
	}
	return nil
}

// releaseStdio lets go of the job's stdio once the job holds it: the
// descriptors received in warm mode are closed, and 0, 1 and 2 point to
// /dev/null, so that the job's output ends with the job.
func (in *initProc) releaseStdio() {
	for _, f := range in.stdio {
		f.Close()
	}
	in.stdio = nil
	null := in.null
	in.null = nil
	if null == nil {
		var err error
		if null, err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
			return // keep them: the output then ends when the init exits
		}
	}
	defer null.Close()
	sc, err := null.SyscallConn()
	if err != nil {
		return
	}
	_ = sc.Control(func(fd uintptr) {
		for i := 0; i < 3; i++ {
			_ = unix.Dup2(int(fd), i)
		}
	})
}

// ownNamespace reports whether this process is in a namespace of the given
// kind different from its parent's. It reads /proc, which at this point is
// still the parent's view, so the parent's pid is found in /proc/self/stat
// even when we are PID 1 of a new PID namespace (getppid returns 0 there).
func ownNamespace(kind string) (bool, error) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return false, fmt.Errorf("checking the %s namespace: %w", kind, err)
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if i < 0 || len(f) < 2 {
		return false, fmt.Errorf("checking the %s namespace: malformed /proc/self/stat", kind)
	}
	ppid := f[1]
	self, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		return false, fmt.Errorf("checking the %s namespace: %w", kind, err)
	}
	parent, err := os.Readlink("/proc/" + ppid + "/ns/" + kind)
	if err != nil {
		return false, fmt.Errorf("checking the %s namespace of the parent (pid %s): %w", kind, ppid, err)
	}
	return self != parent, nil
}

// ErrNotFound and ErrNotExecutable are wrapped by the errors of LookPath.
var (
	ErrNotFound      = errors.New("command not found")
	ErrNotExecutable = errors.New("command not executable")
)

// LookPath finds the executable for file the way a shell does for a job
// that will run in dir with the given $PATH value: a name with a slash is
// taken as is (relative to dir), otherwise the first executable regular file
// of that name in a $PATH directory wins (relative directories and empty
// entries count from dir). The error wraps ErrNotFound when nothing of that
// name exists (the shell's exit 127) and ErrNotExecutable when only files
// that cannot be executed do (exit 126). Execute permission is checked for
// anyone, not for a particular user; exec itself has the final word.
func LookPath(file, pathEnv, dir string) (string, error) {
	if file == "" {
		return "", fmt.Errorf("%w: empty command name", ErrNotFound)
	}
	if strings.ContainsRune(file, '/') {
		p := file
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		return checkExecutable(p)
	}
	var notExec error
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) && dir != "" {
			d = filepath.Join(dir, d)
		}
		c := filepath.Join(d, file)
		if st, err := os.Stat(c); err == nil && st.IsDir() {
			continue // as in the shell: a directory does not count
		}
		p, err := checkExecutable(c)
		if err == nil {
			return p, nil
		}
		if notExec == nil && errors.Is(err, ErrNotExecutable) {
			notExec = err
		}
	}
	if notExec != nil {
		return "", notExec
	}
	return "", fmt.Errorf("%w: %s (searched PATH=%s)", ErrNotFound, file, pathEnv)
}

func checkExecutable(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: %s: no such file or directory", ErrNotFound, p)
		}
		return "", fmt.Errorf("%w: %s: %w", ErrNotExecutable, p, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%w: %s: permission denied (not an executable file)", ErrNotExecutable, p)
	}
	return p, nil
}

// resolve finds the job's executable.
func (in *initProc) resolve() (string, int, error) {
	file := in.opts.Path
	if file == "" {
		file = in.argv[0]
	}
	p, err := LookPath(file, in.getenv("PATH"), in.opts.Dir)
	switch {
	case errors.Is(err, ErrNotExecutable):
		return "", reasonNoExec, err
	case err != nil:
		return "", reasonNotFound, err
	}
	return p, 0, nil
}

// start starts the job in its own process group, or session with a
// controlling terminal.
func (in *initProc) start(path string) (*os.Process, int, error) {
	sys := &syscall.SysProcAttr{}
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	env := os.Environ()
	if in.warm {
		files, env = in.stdio, in.env
	}
	if !in.opts.NoCtty && isTerminal(int(files[0].Fd())) {
		sys.Setsid = true
		sys.Setctty = true
		sys.Ctty = 0
	} else {
		sys.Setpgid = true
	}
	if c := in.opts.Cred; c != nil {
		sys.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups}
		if sys.Credential.Groups == nil {
			sys.Credential.Groups = []uint32{}
		}
	}
	proc, err := os.StartProcess(path, in.argv, &os.ProcAttr{
		Dir:   in.opts.Dir,
		Env:   env,
		Files: files,
		Sys:   sys,
	})
	if err != nil {
		switch {
		case errors.Is(err, syscall.EACCES) && in.opts.Cred != nil && !CanEnter(in.opts.Dir, *in.opts.Cred):
			return nil, reasonSetup, fmt.Errorf("uid %d cannot enter the working directory %s", in.opts.Cred.UID, in.opts.Dir)
		case errors.Is(err, syscall.ENOENT):
			return nil, reasonNotFound, fmt.Errorf("starting %s: %w", path, err)
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR):
			return nil, reasonNoExec, fmt.Errorf("starting %s: %w", path, err)
		}
		return nil, reasonSetup, fmt.Errorf("starting %s: %w", path, err)
	}
	return proc, 0, nil
}

// CanEnter reports whether the user c may enter dir, judging by the mode
// bits of dir and of every directory above it (ACLs are not consulted). It
// tells apart the two causes of an EACCES from starting a process: a working
// directory the user cannot enter, or an executable it cannot run.
func CanEnter(dir string, c Credential) bool {
	if c.UID == 0 || dir == "" {
		return true
	}
	p := filepath.Clean(dir)
	for {
		st, err := os.Stat(p)
		if err != nil {
			return false
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return true
		}
		var bit uint32 = 0o001
		switch {
		case sys.Uid == c.UID:
			bit = 0o100
		case sys.Gid == c.GID || slices.Contains(c.Groups, sys.Gid):
			bit = 0o010
		}
		if sys.Mode&bit == 0 {
			return false
		}
		if p == "/" || p == "." {
			return true
		}
		p = filepath.Dir(p)
	}
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// supervise forwards signals to the job's process group and reaps children
// until the job itself has exited; it returns the job's wait status.
func (in *initProc) supervise(job int) syscall.WaitStatus {
	// The runtime drops a signal when the channel is full; a SIGCHLD lost
	// that way must not leave the job unreaped, so reap now and then too.
	tick := time.NewTicker(reapInterval)
	defer tick.Stop()
	for {
		select {
		case sig := <-in.sigs:
			s, ok := sig.(syscall.Signal)
			if !ok {
				continue
			}
			switch s {
			case syscall.SIGCHLD:
			case syscall.SIGURG:
				// Runtime preemption signals; see the package comment.
				continue
			default:
				// ESRCH: the group is gone; the SIGCHLD saying so is queued.
				_ = syscall.Kill(-job, s)
				continue
			}
		case <-tick.C:
		}
		if ws, done := reap(job); done {
			return ws
		}
	}
}

// reapInterval is how often the init reaps without being told to.
const reapInterval = time.Second

// reap collects every exited child without blocking and reports the job's
// status once the job is among them.
func reap(job int) (syscall.WaitStatus, bool) {
	var (
		jobStatus syscall.WaitStatus
		jobDone   bool
	)
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return jobStatus, jobDone
		}
		if pid == job && (ws.Exited() || ws.Signaled()) {
			jobStatus, jobDone = ws, true
		}
	}
}

// killRemaining ends whatever the job left behind and reaps it, so the init
// exits with no children. As PID 1 kill(-1) reaches every process of the
// namespace; otherwise the remaining descendants are (or, once their parents
// die, become) our children thanks to PR_SET_CHILD_SUBREAPER.
func (in *initProc) killRemaining() {
	for {
		if in.pid1 {
			_ = syscall.Kill(-1, syscall.SIGKILL)
		} else {
			for _, c := range children() {
				_ = syscall.Kill(c, syscall.SIGKILL)
			}
		}
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.ECHILD {
			return
		}
	}
}

// children lists the direct children of this process (of all its threads).
func children() []int {
	tasks, _ := os.ReadDir("/proc/self/task")
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}
