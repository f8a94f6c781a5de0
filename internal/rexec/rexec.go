// Package rexec is the job engine of a node: it starts a command (a job) on
// this node with the requested identity, working directory, environment and
// stdio (pipes, a pseudo-terminal, or a log file), optionally isolated in new
// PID+mount namespaces under nsinit and in a cgroup of its own; it delivers
// signals to the job, freezes and thaws it, lists its processes and their
// usage, and reports its exit status exactly as a shell would. It does not
// know about RPC, streams between nodes, cluster PIDs or the process table:
// the daemon wires those to a *Job.
//
// # Process layout
//
// A plain job (neither Namespaces nor Cgroup) is started directly, as the
// leader of a process group of its own (or, with TTY, of a session whose
// controlling terminal is the pty). Pid and MainPid are the same process.
//
// A job with Namespaces or Cgroup is started under nsinit. From a Pool (see
// there), an init that is already running in its namespaces and cgroup gets
// the command over a socket. Otherwise the engine re-executes InitPath (the
// ssi binary, /proc/self/exe by default) as
//
//	ssi __init -path EXE -dir DIR -uid U -gid G [-groups ...] [-hostname H] -status-fd 3 -sync-fd 4 -- ARGV...
//
// with CLONE_NEWPID (and CLONE_NEWUTS for Hostname) when
// Namespaces is set. On cgroup v2 the init starts in the job's cgroup
// (clone3 with CLONE_INTO_CGROUP, where the kernel has it); otherwise the
// engine moves it there while the init waits on fd 4, so no process of the
// job ever runs outside it. Then the init starts the command (MainPid) and
// reports on fd 3 (see package nsinit for both contracts). When the command
// exits, the init kills whatever it left behind and reports the status
// (Exited); the engine then reaps the init and removes the cgroup after
// killing anything that is still in it (Done). Processes a plain job leaves
// behind are not tracked.
//
// # Exit status
//
// Wait returns Status{Code} for an exit and Status{Signal} for a death by
// signal; ExitCode gives 128+signal for the latter, as shells do. Under nsinit
// the status is the command's own, taken from the init's status report (the
// init itself exits 128+signal because a PID 1 cannot die of its own
// signal), so a job killed by SIGKILL reports SIGKILL and 137 either way.
//
// # Signals
//
// Signal delivers to the job's whole process group. Under nsinit, catchable
// signals go to the init, which forwards them to the group; SIGKILL and
// SIGSTOP, which the init could not catch, go straight to the group (the
// engine knows the command's host PID).
//
// # Stdio
//
// The engine hands the daemon the parent's ends of kernel pipes (or the pty
// master) and copies nothing itself, so a slow reader slows the job down
// instead of filling memory. A detached job (Spec.LogPath) writes straight
// into its log file (only a detached TTY job's output is copied there by the
// engine); Follow streams that file for `ssi logs -f`.
//
// # Privileges
//
// Namespaces and cgroups need root. When the daemon is not root, or the
// kernel refuses to create them, Start runs the job without them, logs a
// warning, and the job reports Migratable() == false; it never fails for
// that reason alone. Only root can switch credentials: a daemon that is not
// root runs jobs as itself and refuses any other UID/GID with ErrPermission.
package rexec

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// Sentinel errors, wrapped by the errors of this package.
var (
	// ErrNotFound: the command does not exist (a shell exits 127).
	ErrNotFound = nsinit.ErrNotFound
	// ErrNotExecutable: the command exists but cannot be executed (126).
	ErrNotExecutable = nsinit.ErrNotExecutable
	// ErrPermission: the daemon may not run the job as the requested user.
	ErrPermission = errors.New("not permitted")
	// ErrNotSupported: the job lacks what the operation needs (a cgroup
	// for Freeze/Thaw, a terminal for Resize, stdin for a detached job).
	ErrNotSupported = errors.New("not supported for this job")
	// ErrFinished: the job has already exited.
	ErrFinished = errors.New("job has already finished")
)

// DefaultPath is the PATH a job gets when its environment has none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultCgroupParent is where job cgroups are created in each hierarchy.
const DefaultCgroupParent = "/ssi"

// Spec describes a job.
type Spec struct {
	// ID names the job's cgroup ("job-<ID>"): letters, digits, '.', '_'
	// and '-', at most 64 characters. Empty: a name unique to this daemon.
	ID string
	// Argv is the command and its arguments; Argv[0] is looked up in the
	// job's PATH (relative to Dir) unless it contains a slash.
	Argv []string
	// Env is the job's whole environment. Nil: only PATH=DefaultPath. The
	// daemon's own environment is never passed on.
	Env []string
	// Dir is the working directory; empty means "/". It is entered after
	// the switch to UID/GID, so that user must be able to. With Root it is
	// a directory inside Root.
	Dir string
	// Root, if set, is the job's root directory: an absolute path the
	// job's init chroots into (after the namespaces, before the switch to
	// UID/GID) and then chdirs to Dir inside. Argv[0] is then looked up in
	// PATH inside Root, and a missing command or directory is reported by
	// the init. The job always starts under nsinit (even without
	// Namespaces or Cgroup), from the pool or not, so that the chroot
	// happens in one place. No mount namespace is made: what the job sees
	// in Root is what the node has mounted there (the cluster filesystem
	// with the node's /proc, /dev, /sys and /run bound in: internal/cfs).
	Root string
	// UID, GID and Groups are the job's credentials. A root daemon applies
	// them always (the zero value is root with no supplementary groups); a
	// daemon that is not root requires them to be its own.
	UID, GID uint32
	Groups   []uint32
	// TTY runs the job on a new pseudo-terminal of Rows x Cols (0: the
	// kernel's default): stdin and stdout carry the terminal's input and
	// (merged) output, Stderr is empty, Resize changes the size.
	TTY        bool
	Rows, Cols uint16
	// Namespaces runs the job in a new PID namespace, with nsinit as PID 1
	// (see jobCloneflags for why it shares the node's mount namespace and
	// /proc). Hostname, if set, also gives it a UTS namespace with that
	// hostname (ignored without Namespaces).
	Namespaces bool
	Hostname   string
	// Net, with Namespaces, gives the job a network namespace of its own
	// (ssi run --net, internal/jobnet): the init starts in a new one, and
	// Net is called with the init's host PID before the command runs, to
	// give it its interfaces; an error fails the start. Such a job never
	// comes from the Pool, and never falls back to running without
	// namespaces.
	Net func(initPid int) error
	// Cgroup puts the job in a cgroup of its own, CgroupParent/job-<ID>,
	// which Freeze, Thaw and Pids use and which is removed when the job
	// ends. cgroup v1 (freezer and memory hierarchies) is used when its
	// freezer is mounted, else cgroup v2. CgroupParent (DefaultCgroupParent
	// if empty) is relative to each hierarchy's root when absolute, and to
	// the daemon's own cgroup in that hierarchy when relative.
	Cgroup       bool
	CgroupParent string
	// InitPath is the binary re-executed as nsinit (it must dispatch
	// "__init" to nsinit.Main). Empty: /proc/self/exe.
	InitPath string
	// Pool, if set, provides a ready init for a job with Namespaces and
	// Cgroup (and no Hostname, the pool's InitPath and CgroupParent), which
	// saves most of the start; the job is the same. Without a ready init
	// the job starts as without a pool.
	Pool *Pool
	// LogPath makes the job detached: its stdout and stderr are appended
	// to this file (created 0640 if needed), stdin is /dev/null (with TTY,
	// the terminal's output is copied to the file and Stdin still writes
	// to the terminal). Read it with Follow.
	LogPath string
}

// Status is how a job ended.
type Status struct {
	Code   int            // exit code; 0 when the job died of a signal
	Signal syscall.Signal // the signal that killed the job; 0 if it exited
	Core   bool           // the job dumped core
}

// ExitCode returns the status as a shell reports it: the exit code, or
// 128+N for a death by signal N.
func (s Status) ExitCode() int {
	if s.Signal != 0 {
		return 128 + int(s.Signal)
	}
	return s.Code
}

// String describes the status for humans.
func (s Status) String() string {
	if s.Signal != 0 {
		core := ""
		if s.Core {
			core = " (core dumped)"
		}
		return fmt.Sprintf("killed by signal %d (%v)%s", int(s.Signal), s.Signal, core)
	}
	return fmt.Sprintf("exit status %d", s.Code)
}

// statusOf converts a wait status.
func statusOf(ws syscall.WaitStatus) Status {
	if ws.Signaled() {
		return Status{Signal: ws.Signal(), Core: ws.CoreDump()}
	}
	return Status{Code: ws.ExitStatus()}
}

// jobCloneflags are the namespaces of a job with Namespaces: a PID namespace
// of its own, so that CRIU can restore its PIDs unchanged on another node,
// and no mount namespace. A job shares the node's mounts (and so its view of
// /proc, where the job's processes appear under their node-wide PIDs): CRIU
// then resolves every file the job has open by its path on the target node,
// while a private mount namespace would have CRIU dump and rebuild the
// node's whole mount table, which it refuses for the mounts a node commonly
// has (network namespace files under /run/netns, for one).
const jobCloneflags = syscall.CLONE_NEWPID
