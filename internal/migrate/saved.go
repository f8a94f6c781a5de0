package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/version"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Checkpoint/restart: a detached job saved into a directory (CRIU's images,
// its log, and what ssi needs to take it back: savedHeader) and restarted
// later on any node that sees that directory, with its cluster PID if it
// is free.

// savedHeader is the file in a checkpoint directory that says what it holds.
const savedHeader = "ssi-checkpoint.json"

func callerUID(ctx context.Context) (uint32, error) {
	tc, ok := transport.CallerFrom(ctx)
	if !ok {
		return 0, connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: no peer credentials"))
	}
	return tc.UID, nil
}

// Checkpoint (Control) saves a process, wherever it runs, into a
// directory of its node.
func (c *Control) Checkpoint(ctx context.Context, req *connect.Request[ssiv1.CheckpointRequest]) (*connect.Response[ssiv1.CheckpointResponse], error) {
	m := c.m
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	cpid := vproc.CPID(q.Cpid)
	if !cpid.Valid() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d is not a cluster PID", q.Cpid))
	}
	cl := m.cfg.FSM.Cluster()
	src := locate(cl, cpid)
	if n, ok := cl.Nodes[src]; !ok || n.State != state.Up {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d was on node %d, which is not UP", q.Cpid, src))
	}
	if src == m.cfg.Self {
		return m.Service().Checkpoint(ctx, connect.NewRequest(q))
	}
	remote, err := m.clients.To(src)
	if err != nil {
		return nil, rpcerr.Unavailable("node %d: %w", src, err)
	}
	return remote.Checkpoint(ctx, connect.NewRequest(q))
}

// Restart (Control) restarts a saved process on the node asked for.
func (c *Control) Restart(ctx context.Context, req *connect.Request[ssiv1.RestartRequest]) (*connect.Response[ssiv1.RestartResponse], error) {
	m := c.m
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	to := q.Node
	if to == 0 || to == m.cfg.Self {
		return m.Service().Restart(ctx, connect.NewRequest(q))
	}
	n, ok := m.cfg.FSM.Cluster().Nodes[to]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d is not in the node table", to))
	}
	if n.State != state.Up {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d (%s) is %s", to, n.Name, n.State))
	}
	remote, err := m.clients.To(to)
	if err != nil {
		return nil, rpcerr.Unavailable("node %d: %w", to, err)
	}
	return remote.Restart(ctx, connect.NewRequest(q))
}

func refused(format string, a ...any) error {
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(format, a...))
}

// checkNewDir says whether uid may have dir created for it: an absolute
// path that does not exist, in a directory uid owns (root: any).
func checkNewDir(dir string, uid uint32) error {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%q: want an absolute, clean path", dir))
	}
	if _, err := os.Lstat(dir); err == nil {
		return refused("%s exists: a checkpoint goes into a new directory", dir)
	}
	st, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		return refused("%v", err)
	}
	if !st.IsDir() {
		return refused("%s is not a directory", filepath.Dir(dir))
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok && uid != 0 && s.Uid != uid {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s belongs to uid %d, not to you (uid %d)", filepath.Dir(dir), s.Uid, uid))
	}
	return nil
}

// Checkpoint saves a process of this node.
func (s *Service) Checkpoint(ctx context.Context, req *connect.Request[ssiv1.CheckpointRequest]) (*connect.Response[ssiv1.CheckpointResponse], error) {
	m := s.m
	q := req.Msg
	if !q.HasUid {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the caller's uid is missing"))
	}
	cpid := vproc.CPID(q.Cpid)
	j, err := m.cfg.Jobs.Movable(cpid, procs.Caller{UID: q.Uid})
	if err != nil {
		return nil, m.jobsError(err)
	}
	if !j.Detached {
		return nil, refused("node %d: process %d is attached to the client that started it: only detached jobs (ssi run -d) can be checkpointed", m.cfg.Self, cpid)
	}
	if err := checkNewDir(q.Dir, q.Uid); err != nil {
		return nil, err
	}
	criuPath, err := m.criu()
	if err != nil {
		return nil, err
	}
	rj := j.Process()
	init, paths := rj.InitPid(), rj.CgroupPaths()
	if init == 0 || len(paths) == 0 {
		return nil, refused("node %d: process %d has no init or cgroup to checkpoint", m.cfg.Self, cpid)
	}
	if err := m.refuseNetCheckpoint(j.CPID); err != nil {
		return nil, err
	}
	if err := refuseInetSockets(rj); err != nil {
		return nil, refused("node %d: process %d: %w", m.cfg.Self, cpid, err)
	}
	statusKey, err := rexecFileKey(init)
	if err != nil {
		return nil, m.fail(err)
	}
	if err := os.Mkdir(q.Dir, 0o700); err != nil {
		return nil, refused("%v", err)
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(q.Dir)
		}
	}()
	if err := rj.Freeze(); err != nil {
		return nil, m.fail(fmt.Errorf("process %d: %w", cpid, err))
	}
	frozen := time.Now()
	ended := false
	defer func() {
		if !ended {
			if err := rj.Thaw(); err != nil {
				m.log.Error("thawing a job after its checkpoint", "cpid", cpid, "err", err)
			}
		}
	}()
	if err := m.dumpFrozen(cpid, rj, dumpSpec{criu: criuPath, pid: init, dir: q.Dir, freeze: paths[0], external: []string{statusKey}}); err != nil {
		return nil, refused("node %d: process %d: %w; it goes on running", m.cfg.Self, cpid, err)
	}
	dumped := time.Since(frozen)
	hdr := &ssiv1.MigrateHeader{
		Cpid: int64(cpid), From: m.cfg.Self, Uid: j.UID, Argv: j.Argv, StartedUnixNano: j.Started.UnixNano(),
		StatusKey: statusKey, LogKey: strings.TrimPrefix(j.LogPath, "/"), Version: version.Version, Nodes: j.Nodes, Root: rj.Root(),
	}
	if err := copyFile(j.LogPath, filepath.Join(q.Dir, logEntry)); err != nil {
		return nil, m.fail(fmt.Errorf("saving the log of process %d: %w", cpid, err))
	}
	b, err := protojson.MarshalOptions{Multiline: true}.Marshal(hdr)
	if err == nil {
		err = os.WriteFile(filepath.Join(q.Dir, savedHeader), b, 0o600)
	}
	if err != nil {
		return nil, m.fail(fmt.Errorf("saving process %d: %w", cpid, err))
	}
	var size int64
	_ = filepath.WalkDir(q.Dir, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			if fi, e := d.Info(); e == nil && !d.IsDir() {
				size += fi.Size()
			}
			_ = os.Lchown(p, int(q.Uid), -1)
		}
		return nil
	})
	keep = true
	if !q.LeaveRunning {
		// Its state is in the directory now: the job here ends, as one
		// that moved away (not reported as an exit).
		ended = true
		if err := m.cfg.Jobs.MoveOut(j); err != nil {
			m.log.Warn("ending a checkpointed job", "cpid", cpid, "err", err)
		}
	}
	m.log.Info("process checkpointed", "cpid", cpid, "dir", q.Dir, "bytes", size, "leave_running", q.LeaveRunning)
	return connect.NewResponse(&ssiv1.CheckpointResponse{Node: m.cfg.Self, Bytes: size, DumpUs: dumped.Microseconds(), FreezeUs: time.Since(frozen).Microseconds()}), nil
}

// Restart restarts a saved process here.
func (s *Service) Restart(ctx context.Context, req *connect.Request[ssiv1.RestartRequest]) (*connect.Response[ssiv1.RestartResponse], error) {
	m := s.m
	q := req.Msg
	if !q.HasUid {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the caller's uid is missing"))
	}
	if !filepath.IsAbs(q.Dir) {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%q: want an absolute path", q.Dir))
	}
	st, err := os.Stat(q.Dir)
	if err != nil {
		return nil, refused("node %d: %v", m.cfg.Self, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && q.Uid != 0 && sys.Uid != q.Uid {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s belongs to uid %d, not to you (uid %d)", q.Dir, sys.Uid, q.Uid))
	}
	b, err := os.ReadFile(filepath.Join(q.Dir, savedHeader))
	if err != nil {
		return nil, refused("node %d: %s is not a checkpoint of ssi checkpoint: %v", m.cfg.Self, q.Dir, err)
	}
	h := &ssiv1.MigrateHeader{}
	if err := protojson.Unmarshal(b, h); err != nil {
		return nil, refused("node %d: %s: %v", m.cfg.Self, savedHeader, err)
	}
	switch {
	case q.Uid != 0 && h.Uid != q.Uid:
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("the checkpoint in %s is of uid %d's process", q.Dir, h.Uid))
	case h.Version != version.Version:
		return nil, refused("the checkpoint was made by ssi %s, this node runs %s", h.Version, version.Version)
	case !vproc.CPID(h.Cpid).Valid() || h.StatusKey == "" || h.LogKey == "":
		return nil, refused("%s: incomplete", savedHeader)
	case len(h.Nodes) > 0 && !slices.Contains(h.Nodes, m.cfg.Self):
		return nil, refused("process %d may run only on nodes %v (ssi run --nodes), not on node %d", h.Cpid, h.Nodes, m.cfg.Self)
	}
	if err := m.checkRoot(h); err != nil {
		return nil, err
	}
	criuPath, err := m.criu()
	if err != nil {
		return nil, err
	}
	cpid := vproc.CPID(h.Cpid)
	if m.inUse(ctx, cpid) {
		if cpid, err = m.cfg.Jobs.NewCPID(); err != nil {
			return nil, m.fail(err)
		}
		h.Cpid = int64(cpid)
	}
	dir, err := m.stage("in", cpid)
	if err != nil {
		return nil, m.fail(err)
	}
	defer unstage(dir)
	ents, err := os.ReadDir(q.Dir)
	if err != nil {
		return nil, refused("%v", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == logEntry || e.Name() == savedHeader || strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		if err := copyFile(filepath.Join(q.Dir, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return nil, m.fail(err)
		}
	}
	logPath := filepath.Join(m.cfg.Jobs.LogDir(), cpid.String()+".log")
	if err := copyFile(filepath.Join(q.Dir, logEntry), logPath); err != nil {
		return nil, m.fail(fmt.Errorf("the job's log: %w", err))
	}
	started := time.Now()
	pj, err := m.restore(criuPath, h, dir, logPath, nil, nil)
	if err != nil {
		os.Remove(logPath)
		return nil, refused("node %d: restarting process %d: %w", m.cfg.Self, cpid, err)
	}
	// Where it runs, unless that is the node its CPID names.
	loc := m.cfg.Self
	if loc == uint32(cpid.Node()) {
		loc = 0
	}
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdMoved, state.Moved{CPID: int64(cpid), To: m.cfg.Self, Record: loc, Why: "ssi restart " + q.Dir, Time: time.Now()}); err != nil {
		_ = m.cfg.Jobs.MoveOut(pj)
		return nil, m.fail(fmt.Errorf("recording that process %d runs on node %d: %w", cpid, m.cfg.Self, err))
	}
	if err := pj.Process().Thaw(); err != nil {
		return nil, m.fail(fmt.Errorf("process %d: %w", cpid, err))
	}
	m.log.Info("process restarted", "cpid", cpid, "dir", q.Dir)
	return connect.NewResponse(&ssiv1.RestartResponse{Cpid: int64(cpid), Node: m.cfg.Self, RestoreUs: time.Since(started).Microseconds()}), nil
}

// inUse says whether cpid names a process the cluster knows: in this
// node's table, or in that of the (UP) node where it would run.
func (m *Migrator) inUse(ctx context.Context, cpid vproc.CPID) bool {
	if m.cfg.Jobs.Has(cpid) {
		return true
	}
	cl := m.cfg.FSM.Cluster()
	at := locate(cl, cpid)
	n, ok := cl.Nodes[at]
	if at == m.cfg.Self || !ok || n.State != state.Up {
		return false // its node is gone: the number is free
	}
	pc, err := m.procClients.To(at)
	if err != nil {
		return true // cannot tell: do not reuse it
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := pc.Procs(ctx, connect.NewRequest(&ssiv1.ProcsRequest{Cpid: int64(cpid), All: true}))
	if err != nil {
		return true
	}
	for _, p := range resp.Msg.Procs {
		if p.Cpid == int64(cpid) {
			return true
		}
	}
	return false
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}
