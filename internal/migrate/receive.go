package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/procspace"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/version"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Receive, on the target: take the checkpoint in, restore the process here
// frozen, say so, and thaw it once the source commits (or, if the stream
// ends first, once the replicated state says the process is here).
func (s *Service) Receive(ctx context.Context, st *connect.BidiStream[ssiv1.MigrateChunk, ssiv1.MigrateReceipt]) error {
	m := s.m
	from, err := peerNode(ctx, st.RequestHeader())
	if err != nil {
		return err
	}
	first, err := st.Receive()
	if err != nil {
		return err
	}
	h := first.Header
	switch {
	case h == nil:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("the stream must start with a header"))
	case h.From != from:
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d sends a process of node %d", from, h.From))
	case h.Version != version.Version:
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d runs ssi %s and node %d ssi %s: both must run the same version (the jobs' init is the ssi binary)", h.From, h.Version, m.cfg.Self, version.Version))
	case !vproc.CPID(h.Cpid).Valid() || h.StatusKey == "":
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("bad header for process %d", h.Cpid))
	}
	if err := m.checkRoot(h); err != nil {
		return err
	}
	cpid := vproc.CPID(h.Cpid)
	nj, err := m.netOf(cpid, 0) // its init's PID here once restored
	if err != nil {
		return err
	}
	criuPath, err := m.criu()
	if err != nil {
		return err
	}
	dir, err := m.stage("in", cpid)
	if err != nil {
		return m.fail(err)
	}
	defer unstage(dir)
	logPath := ""
	if h.LogKey != "" {
		logPath = filepath.Join(m.cfg.Jobs.LogDir(), cpid.String()+".log")
	}
	cr := &chunkReader{recv: st.Receive}
	if err := receive(cr, dir, logPath); err != nil {
		if logPath != "" {
			os.Remove(logPath)
		}
		return m.fail(fmt.Errorf("process %d from node %d: %w", cpid, h.From, err))
	}
	var pc *postCopyTarget // post-copy (postcopy.go)
	if h.Postcopy {
		if pc, err = m.startPostCopy(ctx, criuPath, h, dir); err != nil {
			if logPath != "" {
				os.Remove(logPath)
			}
			return err
		}
		defer pc.close()
	}
	started := time.Now()
	pj, err := m.restore(criuPath, h, dir, logPath, nj, pc.ready())
	if err != nil {
		if logPath != "" {
			os.Remove(logPath)
		}
		// What the job holds does not exist here (a file, a binary of
		// another version): a refusal of this node.
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: restoring process %d from node %d: %w", m.cfg.Self, cpid, h.From, err))
	}
	pc.restoredJob(pj)
	if err := st.Send(&ssiv1.MigrateReceipt{Restored: true, RestoreUs: time.Since(started).Microseconds()}); err != nil {
		m.settle(pj, h, nj)
		pc.settled(m, pj, h)
		return err
	}
	c, err := st.Receive()
	if err != nil || !c.Commit {
		m.settle(pj, h, nj)
		pc.settled(m, pj, h)
		return nil
	}
	if err := nj.arrive(); err != nil {
		m.log.Error("a process with its own address moved here and its network could not be unlocked", "cpid", cpid, "err", err)
	}
	pc.thawed()
	if err := pj.Process().Thaw(); err != nil {
		return m.fail(fmt.Errorf("process %d: %w", cpid, err))
	}
	m.arrived(cpid)
	if err := st.Send(&ssiv1.MigrateReceipt{Resumed: true}); err != nil || pc == nil {
		return err
	}
	return pc.finish(st)
}

// stdioPipeSize is the size of an attached job's pipes (as procspace
// makes them).
const stdioPipeSize = 1 << 20

// settle decides about a restored copy whose source went silent before the
// commit: the replicated location is the commit point.
func (m *Migrator) settle(pj *procs.Job, h *ssiv1.MigrateHeader, nj *jobNet) {
	if locate(m.cfg.FSM.Cluster(), vproc.CPID(h.Cpid)) == m.cfg.Self {
		if err := nj.arrive(); err != nil {
			m.log.Error("a process with its own address moved here and its network could not be unlocked", "cpid", h.Cpid, "err", err)
		}
		if err := pj.Process().Thaw(); err != nil {
			m.log.Error("thawing a process that moved here", "cpid", h.Cpid, "err", err)
		}
		return
	}
	nj.leave()
	if err := m.cfg.Jobs.MoveOut(pj); err != nil {
		m.log.Warn("ending a restored copy the source did not commit", "cpid", h.Cpid, "err", err)
	}
}

// restore restores the images in dir as process h.Cpid of this node,
// frozen, with its init reporting to this daemon and its log (if detached)
// at logPath.
func (m *Migrator) restore(criuPath string, h *ssiv1.MigrateHeader, dir, logPath string, nj *jobNet, ready func() error) (*procs.Job, error) {
	cpid := vproc.CPID(h.Cpid)
	inherit := map[string]*os.File{}
	var keep []*os.File // the daemon's own ends
	defer func() {
		for _, f := range inherit {
			f.Close()
		}
	}()
	// The init's report channel: a pipe for a job that started its own
	// init, a socket for one that came from the pool of ready inits.
	var status *os.File
	switch {
	case strings.HasPrefix(h.StatusKey, "pipe:"):
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		status, inherit[h.StatusKey] = r, w
	case strings.HasPrefix(h.StatusKey, "socket:"):
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("creating the init's socket: %w", err)
		}
		status, inherit[h.StatusKey] = os.NewFile(uintptr(fds[0]), "init-status"), os.NewFile(uintptr(fds[1]), "init-status")
	default:
		return nil, fmt.Errorf("the init reports on %q, which cannot be re-created here", h.StatusKey)
	}
	keep = append(keep, status)
	fail := func(err error) (*procs.Job, error) {
		for _, f := range keep {
			f.Close()
		}
		return nil, err
	}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fail(fmt.Errorf("opening the job's log: %w", err))
		}
		inherit[h.LogKey] = f
	}
	// An attached job's stdio: new pipes in place of the old node's, the
	// daemon keeping the other ends for the stream that follows the job.
	var pipes [3]*os.File
	var term *procspace.Terminal
	if h.Attached && h.Tty {
		var err error
		if term, err = jobTerminal(h, inherit); err != nil {
			return fail(err)
		}
		keep = append(keep, term.Master)
	} else if h.Attached {
		if len(h.StdioKeys) != 3 {
			return fail(fmt.Errorf("an attached job with %d stdio pipes, want 3", len(h.StdioKeys)))
		}
		for i, key := range h.StdioKeys {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, stdioPipeSize)
			mine, theirs := r, w // stdout, stderr: the job writes
			if i == 0 {
				mine, theirs = w, r // stdin: the job reads
			}
			if _, dup := inherit[key]; dup {
				r.Close()
				w.Close()
				return fail(fmt.Errorf("the job's stdio pipe %s twice", key))
			}
			pipes[i], inherit[key] = mine, theirs
			keep = append(keep, mine)
		}
		// What the job had not read of its stdin goes first (it fits:
		// it was in a pipe of that size).
		if len(h.StdinPending) > 0 {
			if _, err := pipes[0].Write(h.StdinPending); err != nil {
				return fail(fmt.Errorf("giving back the job's unread stdin: %w", err))
			}
		}
		if h.StdinClosed {
			pipes[0].Close()
		}
	}
	cgID := cpid.String() + "-from" + fmt.Sprint(h.From) + "-" + filepath.Base(dir)[len("in-"+cpid.String()+"-"):]
	roots, err := rexec.CgroupRoots(m.cfg.Jobs.CgroupParent(), cgID)
	if err != nil {
		return fail(err)
	}
	pid, err := restore(restoreSpec{criu: criuPath, dir: dir, inherit: inherit, cgroups: roots, net: nj, lazy: h.Postcopy, ready: ready})
	if err != nil {
		return fail(err)
	}
	if nj != nil {
		nj.pid = pid
	}
	rj, err := rexec.Adopt(rexec.AdoptSpec{ID: cpid.String(), Pid: pid, Status: status, CgroupParent: m.cfg.Jobs.CgroupParent(), CgroupID: cgID, Root: h.Root}, m.log)
	if err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return fail(err)
	}
	pj, err := m.cfg.Jobs.Adopt(procs.AdoptRequest{
		CPID: cpid, UID: h.Uid, Argv: h.Argv, Started: time.Unix(0, h.StartedUnixNano),
		Detached: logPath != "", LogPath: logPath, Nodes: h.Nodes, Process: rj, Net: m.adoptedNet(cpid),
	})
	if err != nil {
		_ = rj.Discard()
		return nil, err
	}
	if h.Attached {
		m.cfg.Streams.Arrive(pj, arrivalOf(h, pipes, term))
	}
	return pj, nil
}

// checkRoot refuses, before anything is restored, a job whose root
// directory this node cannot give it: CRIU restores a task's root by its
// path, so a job whose / is the cluster root (rexec.Spec.Root) restores
// only where this node's jobs get the cluster root at that same path. The
// nodes of `ssi up` without --isolate mount the cluster filesystem at
// different paths (DIR/mnt/nodeK): such jobs cannot move between them.
func (m *Migrator) checkRoot(h *ssiv1.MigrateHeader) error {
	if h.Root == "" {
		return nil
	}
	here, err := "", error(nil)
	if m.cfg.JobRoot != nil {
		here, err = m.cfg.JobRoot()
	}
	switch {
	case err != nil:
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has the cluster root at %s as its /, which node %d cannot give it now: %w", h.Cpid, h.Root, m.cfg.Self, err))
	case here == "":
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has the cluster root at %s as its /, and node %d runs its jobs in its own root (no --cfs-job-root): it cannot move there", h.Cpid, h.Root, m.cfg.Self))
	case here != h.Root:
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has the cluster root at %s as its /, and node %d mounts it at %s: a job whose / is the cluster root moves only between nodes that mount it at the same path (CRIU restores its root by path; the nodes of 'ssi up' without --isolate mount it at different ones)", h.Cpid, h.Root, m.cfg.Self, here))
	}
	return nil
}

// peerNode is the node a member-only stream comes from (by its cluster
// certificate).
func peerNode(ctx context.Context, h http.Header) (uint32, error) {
	from, _, _, ok := peer.Origin(ctx, h)
	if !ok {
		return 0, connect.NewError(connect.CodePermissionDenied, errors.New("a cluster certificate is required"))
	}
	return from, nil
}
