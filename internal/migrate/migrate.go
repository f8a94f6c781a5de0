package migrate

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/procspace"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/version"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Config is what migration needs from the node.
type Config struct {
	Self    uint32
	FSM     *state.FSM
	Leader  *consensus.Leader
	Net     peer.Net
	Jobs    *procs.Manager
	Streams Streams
	Placer  Placer
	Loads   Loads
	DataDir string // checkpoints are staged in DataDir/migrate
	CRIU    string // the criu binary ("": FindCRIU's search)
	// JobRoot is where this node's jobs get their root directory
	// (cfs.FS.JobRoot; nil: the node's own): a job that has the cluster
	// root as its / is received only where it is the same path.
	JobRoot func() (string, error)
	// PostCopyAbove is the job size (bytes) from which a move is post-copy
	// when the caller does not say (0: DefaultPostCopyAbove; < 0: never).
	PostCopyAbove int64
	// PipeMaxSize reads fs.pipe-max-size (nil: the kernel's; a seam for tests).
	PipeMaxSize func() (int, error)
	// JobNet are the networks of --net jobs (internal/jobnet; nil: none).
	JobNet JobNets
	Log    *slog.Logger
}

// Streams are the streams of attached jobs (internal/procspace, move.go):
// stopped and handed over on the source, taken up on the target.
type Streams interface {
	Quiesce(cpid vproc.CPID) (*procspace.MoveState, error)
	Resume(cpid vproc.CPID, st *procspace.MoveState) error
	Commit(cpid vproc.CPID, node uint32, st *procspace.MoveState)
	Arrive(j *procs.Job, a procspace.Arrival)
}

// Migrator is one node's part of migration: the source side (Move), the
// target side (Receive) and the CLI's entry (Control).
type Migrator struct {
	cfg         Config
	log         *slog.Logger
	clients     *peer.Clients[ssiv1connect.MigrateClient]
	procClients *peer.Clients[ssiv1connect.ProcessClient]
	arr         arrivals
	pages       pageSources // post-copy moves whose pages this node serves (pagerelay.go)
	pcClients   *peer.Clients[ssiv1connect.PostCopyClient]
	stats       *stats // migrations out of this node (metrics.go)
}

// New returns the node's migrator.
func New(cfg Config) *Migrator {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Migrator{cfg: cfg, log: cfg.Log, clients: peer.NewClients(cfg.Net, ssiv1connect.NewMigrateClient),
		procClients: peer.NewClients(cfg.Net, ssiv1connect.NewProcessClient), stats: newStats(),
		pcClients: peer.NewClients(cfg.Net, ssiv1connect.NewPostCopyClient)}
	// Checkpoints a daemon that died left behind (in memory, on tmpfs).
	if cfg.DataDir != "" {
		_ = os.RemoveAll(m.stagingBase())
	}
	if cfg.Jobs != nil {
		cfg.Jobs.OnForget(m.forgotten)
	}
	if cfg.Leader != nil {
		cfg.Leader.OnLeading(m.leveler)
	}
	return m
}

// forgotten drops the location record of a job that moved here once it has
// ended and been waited for.
func (m *Migrator) forgotten(cpid vproc.CPID) {
	if n, ok := m.cfg.FSM.Cluster().Location(int64(cpid)); !ok || n != m.cfg.Self || m.cfg.Leader == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := m.cfg.Leader.Apply(ctx, state.CmdSetLocation, state.SetLocation{CPID: int64(cpid), Node: 0, Time: time.Now()}); err != nil {
			m.log.Warn("dropping the location record of a job that ended", "cpid", cpid, "err", err)
		}
	}()
}

// Service is the Migrate RPC service.
func (m *Migrator) Service() *Service { return &Service{m: m} }

// Control is the migration part of the Control service.
func (m *Migrator) Control() *Control { return &Control{m: m} }

// Service serves Migrate to the other nodes.
type Service struct{ m *Migrator }

// Control serves the local CLI.
type Control struct{ m *Migrator }

var _ ssiv1connect.MigrateHandler = (*Service)(nil)

func (m *Migrator) fail(err error) error { return rpcerr.ToConnect(m.cfg.Self, err) }

func (m *Migrator) criu() (string, error) {
	p, err := FindCRIU(m.cfg.CRIU)
	if err != nil {
		return "", connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", m.cfg.Self, err))
	}
	return p, nil
}

// stage makes a private directory for one checkpoint.
func (m *Migrator) stage(what string, cpid vproc.CPID) (string, error) {
	base := m.stagingBase()
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", fmt.Errorf("node %d: creating %s: %w", m.cfg.Self, base, err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join(base, what+"-"+cpid.String()+"-"+hex.EncodeToString(b[:]))
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrNotExist) {
		// Another move's unstage took the (empty) base away meanwhile.
		if err = os.MkdirAll(base, 0o700); err == nil {
			err = os.Mkdir(dir, 0o700)
		}
	}
	if err != nil {
		return "", fmt.Errorf("node %d: creating %s: %w", m.cfg.Self, dir, err)
	}
	return dir, nil
}

// unstage removes a checkpoint's directory, and the node's staging
// directory once it is empty: in /dev/shm, one per node and data
// directory, they would pile up (a cluster made and removed for every
// test run, say).
func unstage(dir string) {
	_ = os.RemoveAll(dir)
	_ = os.Remove(filepath.Dir(dir)) // fails while another checkpoint is there
}

// stagingBase is where checkpoints are staged: in memory (/dev/shm, a
// tmpfs) where there is one, so that neither CRIU's dump nor its restore
// waits for a disk (a checkpoint lives there only while the job moves),
// else DataDir/migrate.
func (m *Migrator) stagingBase() string {
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		// One per data directory: nodes of several clusters may share
		// this machine.
		sum := sha256.Sum256([]byte(m.cfg.DataDir))
		return filepath.Join("/dev/shm", fmt.Sprintf("ssi-migrate-node%d-%x", m.cfg.Self, sum[:6]))
	}
	return filepath.Join(m.cfg.DataDir, "migrate")
}

// Migrate moves a process, wherever it runs, to the node asked for.
func (c *Control) Migrate(ctx context.Context, req *connect.Request[ssiv1.MigrateRequest]) (*connect.Response[ssiv1.MigrateResponse], error) {
	m := c.m
	q, src, err := m.route(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	if src == m.cfg.Self {
		return m.Service().Move(ctx, connect.NewRequest(q))
	}
	remote, err := m.clients.To(src)
	if err != nil {
		return nil, rpcerr.Unavailable("node %d: %w", src, err)
	}
	resp, err := remote.Move(ctx, connect.NewRequest(q))
	if err == nil {
		m.awaitLocation(ctx, vproc.CPID(q.Cpid), resp.Msg.To)
	}
	return resp, lostSource(src, err)
}

// route authorizes a migration the local CLI asks for and finds the node
// that runs the process.
func (m *Migrator) route(ctx context.Context, q *ssiv1.MigrateRequest) (*ssiv1.MigrateRequest, uint32, error) {
	tc, ok := transport.CallerFrom(ctx)
	if !ok {
		return nil, 0, connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: no peer credentials"))
	}
	q.Uid, q.HasUid = tc.UID, true
	cpid := vproc.CPID(q.Cpid)
	if !cpid.Valid() {
		return nil, 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d is not a cluster PID", q.Cpid))
	}
	cl := m.cfg.FSM.Cluster()
	src := locate(cl, cpid)
	if n, ok := cl.Nodes[src]; !ok || n.State != state.Up {
		return nil, 0, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d was on node %d, which is not UP: it cannot move", q.Cpid, src))
	}
	return q, src, nil
}

// locate is where cpid runs now (as procspace.Locate).
func locate(c *state.Cluster, cpid vproc.CPID) uint32 {
	if n, ok := c.Location(int64(cpid)); ok {
		return n
	}
	return uint32(cpid.Node())
}

// target resolves the node argument of migrate: a number or "home".
func (m *Migrator) target(cpid vproc.CPID, arg string) (*state.Node, error) {
	var num uint32
	if arg == "home" {
		num = uint32(cpid.Node())
	} else {
		v, err := strconv.ParseUint(arg, 10, 32)
		if err != nil || v == 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("node %q: want a node number or \"home\"", arg))
		}
		num = uint32(v)
	}
	n, ok := m.cfg.FSM.Cluster().Nodes[num]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d is not in the node table", num))
	}
	if n.State != state.Up {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d (%s) is %s: a process can only move to an UP node", num, n.Name, n.State))
	}
	if num == m.cfg.Self {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d already runs on node %d", cpid, num))
	}
	if m.cfg.FSM.Cluster().IsBlocked(num) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d (%s) is blocked: it takes no new jobs (ssi node unblock %d)", num, n.Name, num))
	}
	return n, nil
}

// Move, on the node that runs the process: freeze, checkpoint, send,
// restore on the target, record the new location, end the copy here, and
// let the target's copy run. Until the location is recorded, a failure
// thaws the job here as it was.
func (s *Service) Move(ctx context.Context, req *connect.Request[ssiv1.MigrateRequest]) (*connect.Response[ssiv1.MigrateResponse], error) {
	resp, err := s.m.moveRequest(ctx, req.Msg, nil)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

// MoveWatch is Move reporting its phases on the stream.
func (s *Service) MoveWatch(ctx context.Context, req *connect.Request[ssiv1.MigrateRequest], st *connect.ServerStream[ssiv1.MigrateProgress]) error {
	resp, err := s.m.moveRequest(ctx, req.Msg, func(p *ssiv1.MigrateProgress) { _ = st.Send(p) })
	if err != nil {
		return err
	}
	return st.Send(&ssiv1.MigrateProgress{Phase: "done", Done: resp})
}

// MigrateWatch (Control) is Migrate reporting its phases as it goes.
func (c *Control) MigrateWatch(ctx context.Context, req *connect.Request[ssiv1.MigrateRequest], st *connect.ServerStream[ssiv1.MigrateProgress]) error {
	m := c.m
	q, src, err := m.route(ctx, req.Msg)
	if err != nil {
		return err
	}
	if src == m.cfg.Self {
		return m.Service().MoveWatch(ctx, connect.NewRequest(q), st)
	}
	remote, err := m.clients.To(src)
	if err != nil {
		return rpcerr.Unavailable("node %d: %w", src, err)
	}
	in, err := remote.MoveWatch(ctx, connect.NewRequest(q))
	if err != nil {
		return err
	}
	defer in.Close()
	for in.Receive() {
		p := in.Msg()
		if p.Done != nil {
			m.awaitLocation(ctx, vproc.CPID(q.Cpid), p.Done.To)
		}
		if err := st.Send(p); err != nil {
			return err
		}
	}
	return lostSource(src, in.Err())
}

// lostSource names the source node in a transport error of a move asked
// of it (it may have stopped answering midway), and where to look.
func lostSource(src uint32, err error) error {
	if err == nil || !rpcerr.IsTransport(err) {
		return err
	}
	return rpcerr.Unavailable("node %d, which was moving the process: %w; where_pid says where it runs now (a post-copy move that had resumed on the target ends with its source)", src, err)
}

// progressFunc receives the phases of a move (nil: nobody watches).
type progressFunc func(*ssiv1.MigrateProgress)

// moveRequest is Move: reached from this node's Control (the CLI's uid,
// from its peer credentials) or from another member's (the peer endpoint
// requires a cluster certificate): the uid is the one that member vouches
// for.
func (m *Migrator) moveRequest(ctx context.Context, q *ssiv1.MigrateRequest, report progressFunc) (*ssiv1.MigrateResponse, error) {
	if !q.HasUid {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the caller's uid is missing"))
	}
	cpid := vproc.CPID(q.Cpid)
	to, err := m.target(cpid, q.Node)
	if err != nil {
		return nil, err
	}
	j, err := m.cfg.Jobs.Movable(cpid, procs.Caller{UID: q.Uid})
	if err != nil {
		err = m.jobsError(err)
		m.stats.refusedEarly("migrate", err)
		return nil, err
	}
	if len(j.Nodes) > 0 && !slices.Contains(j.Nodes, to.Num) {
		err := connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d may run only on nodes %v (ssi run --nodes)", cpid, j.Nodes))
		m.stats.refusedEarly("migrate", err)
		return nil, err
	}
	criuPath, err := m.criu()
	if err != nil {
		return nil, err
	}
	pref, err := copyPrefOf(q)
	if err != nil {
		return nil, err
	}
	ph, err := m.move(withCopyPref(ctx, pref), j, to, criuPath, "migrate", report)
	if err != nil {
		return nil, err
	}
	return &ssiv1.MigrateResponse{From: m.cfg.Self, To: to.Num, Phases: ph}, nil
}

func (m *Migrator) jobsError(err error) error {
	switch {
	case errors.Is(err, procs.ErrNoSuchProcess):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d: %w", m.cfg.Self, err))
	case errors.Is(err, procs.ErrNotOwner):
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d: %w", m.cfg.Self, err))
	case errors.Is(err, procs.ErrNotMovable):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", m.cfg.Self, err))
	}
	return m.fail(err)
}

func (m *Migrator) move(ctx context.Context, j *procs.Job, to *state.Node, criuPath, why string, report progressFunc) (*ssiv1.MigratePhases, error) {
	start := time.Now()
	ph, err := m.moveOnce(ctx, j, to, criuPath, why, report)
	m.stats.record(why, start, ph, err)
	return ph, err
}

// moveOnce is move without the metrics.
func (m *Migrator) moveOnce(ctx context.Context, j *procs.Job, to *state.Node, criuPath, why string, report progressFunc) (*ssiv1.MigratePhases, error) {
	ph := &ssiv1.MigratePhases{}
	start := time.Now()
	step := func(phase string, bytes int64) {
		if report != nil {
			report(&ssiv1.MigrateProgress{Phase: phase, Bytes: bytes, ElapsedUs: time.Since(start).Microseconds()})
		}
	}
	// Until the move settles, signals for the job wait (procs.AwaitMove):
	// then they reach the thawed job here, or the node it runs on.
	settle, err := m.cfg.Jobs.Moving(j)
	if err != nil {
		return nil, m.jobsError(err)
	}
	defer settle(false) // no-op once it moved
	rj := j.Process()
	init := rj.InitPid()
	paths := rj.CgroupPaths()
	if init == 0 || len(paths) == 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: process %d has no init or cgroup to checkpoint", m.cfg.Self, j.CPID))
	}
	nj, err := m.netOf(j.CPID, init)
	if err != nil {
		return nil, err
	}
	if nj == nil {
		if err := refuseInetSockets(rj); err != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: process %d: %w", m.cfg.Self, j.CPID, err))
		}
	}
	statusKey, err := rexecFileKey(init)
	if err != nil {
		return nil, m.fail(fmt.Errorf("process %d: %w", j.CPID, err))
	}
	dir, err := m.stage("out", j.CPID)
	if err != nil {
		return nil, m.fail(err)
	}
	defer unstage(dir)
	// Post-copy (postcopy.go): its CRIU starts before the freeze.
	pc, fallback, err := m.preparePostCopy(ctx, rj, to, criuPath, dir, nj != nil)
	if err != nil {
		return nil, err
	}
	defer pc.close()
	ph.Fallback = fallback
	started := startCRIU(criuPath, pc) // a pre-copy dump's CRIU, started before the freeze
	defer endCRIU(started)

	step("freeze", 0)
	if err := rj.Freeze(); err != nil {
		return nil, m.fail(fmt.Errorf("process %d: %w", j.CPID, err))
	}
	frozen := time.Now()
	committed := false
	var ms *procspace.MoveState // an attached job's stream, stopped
	defer func() {
		if !committed {
			if ms != nil {
				if err := m.cfg.Streams.Resume(j.CPID, ms); err != nil {
					m.log.Error("the migration failed and the job's stream could not go on", "cpid", j.CPID, "err", err)
				}
			}
			nj.undo()
			if err := rj.Thaw(); err != nil {
				m.log.Error("the migration failed and the job could not be thawed", "cpid", j.CPID, "err", err)
			}
		}
	}()
	defer func() {
		if !committed {
			pc.close() // before the thaw: CRIU lets go of the job
		}
	}()
	if err := nj.lock(); err != nil {
		return nil, m.fail(fmt.Errorf("process %d: %w", j.CPID, err))
	}
	var stdioKeys, ttyKeys []string
	if !j.Detached {
		if ms, err = m.cfg.Streams.Quiesce(j.CPID); err != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", m.cfg.Self, err))
		}
		if stdioKeys, ttyKeys, err = streamKeys(j.CPID, ms); err != nil {
			return nil, m.fail(err)
		}
	}
	step("dump", 0)
	if err := m.dumpFrozen(j.CPID, rj, dumpSpec{criu: criuPath, pid: init, dir: dir, freeze: paths[0], external: append([]string{statusKey}, ttyKeys...), net: nj, lazy: pc.lazy(), started: started}); err != nil {
		// CRIU could not take this job as it is (a resource it cannot
		// checkpoint): a refusal, not a failure of ssi.
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: process %d: %w; it goes on running here", m.cfg.Self, j.CPID, err))
	}
	ph.DumpUs = time.Since(frozen).Microseconds()

	cl, err := m.clients.To(to.Num)
	if err != nil {
		return nil, rpcerr.Unavailable("node %d (%s): %w", to.Num, to.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := cl.Receive(pc.streamContext(ctx))
	hdr := &ssiv1.MigrateHeader{
		Cpid: int64(j.CPID), From: m.cfg.Self, Uid: j.UID, Argv: j.Argv, StartedUnixNano: j.Started.UnixNano(),
		StatusKey: statusKey, Version: version.Version, Nodes: j.Nodes, Root: rj.Root(),
	}
	if j.LogPath != "" {
		hdr.LogKey = strings.TrimPrefix(j.LogPath, "/")
	}
	pc.header(hdr)
	if ms != nil {
		streamHeader(hdr, ms, stdioKeys)
	}
	sent := time.Now()
	step("transfer", 0)
	n, err := send(st, hdr, dir, j.LogPath, func(b int64) { step("transfer", b) })
	ph.Bytes = n
	if err != nil {
		_ = st.CloseRequest()
		_, rerr := st.Receive()
		return nil, m.peerError(to, fmt.Errorf("sending the checkpoint of process %d: %w", j.CPID, errors.Join(err, ignoreEOF(rerr))))
	}
	step("restore", n)
	r, err := st.Receive()
	if err != nil || !r.Restored {
		_ = st.CloseRequest()
		if err == nil {
			err = errors.New("it did not restore the process")
		}
		return nil, m.peerError(to, fmt.Errorf("restoring process %d: %w", j.CPID, err))
	}
	ph.TransferUs = time.Since(sent).Microseconds() - r.RestoreUs
	ph.RestoreUs = r.RestoreUs
	// The commit point: once the location is recorded, the copy on the
	// target is the process.
	// Back on the node that created it, the process needs no record.
	loc := to.Num
	if loc == uint32(j.CPID.Node()) {
		loc = 0
	}
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdMoved, state.Moved{CPID: int64(j.CPID), From: m.cfg.Self, To: to.Num, Record: loc, Why: why, Time: time.Now()}); err != nil {
		_ = st.CloseRequest()
		return nil, m.fail(fmt.Errorf("recording that process %d moved to node %d: %w", j.CPID, to.Num, err))
	}
	committed = true
	settle(true)
	pc.commit()
	nj.leave()
	if pc == nil {
		m.moveOut(j, to.Num)
	}
	if ms != nil {
		m.cfg.Streams.Commit(j.CPID, to.Num, ms)
	}
	if err := st.Send(&ssiv1.MigrateChunk{Commit: true}); err != nil {
		m.log.Warn("telling the target to resume; it resumes on its own once it sees the location", "cpid", j.CPID, "to", to.Num, "err", err)
	} else if r, err := st.Receive(); err != nil || !r.Resumed {
		m.log.Warn("the target did not confirm that the process runs", "cpid", j.CPID, "to", to.Num, "err", err)
	}
	ph.FreezeUs = time.Since(frozen).Microseconds()
	// Not on the frozen path: the job runs on the target already, and a
	// signal that reaches this node meanwhile is sent on (settle above).
	m.awaitLocation(ctx, j.CPID, to.Num)
	if pc != nil {
		// The job runs on the target; its pages leave from here until
		// the target has them all, and only then does this copy end.
		step("pages", n)
		if err := pc.finish(st, ph); err != nil {
			m.log.Error("a post-copy move lost the job: its pages could not all reach the target, which kills it", "cpid", j.CPID, "to", to.Num, "err", err)
			m.moveOut(j, to.Num)
			_ = st.CloseRequest()
			return nil, m.fail(fmt.Errorf("process %d moved to node %d (post-copy) and ran there, but its memory could not all follow: %w; it was killed there", j.CPID, to.Num, err))
		}
		m.moveOut(j, to.Num)
	}
	_ = st.CloseRequest()
	ph.TotalUs = time.Since(start).Microseconds()
	m.log.Info("process migrated", "cpid", j.CPID, "to", to.Num, "freeze", time.Duration(ph.FreezeUs)*time.Microsecond, "bytes", ph.Bytes)
	return ph, nil
}

// moveOut ends this node's copy of a job that moved to node to.
func (m *Migrator) moveOut(j *procs.Job, to uint32) {
	if err := m.cfg.Jobs.MoveOut(j); err != nil {
		m.log.Warn("ending the copy of a process that moved", "cpid", j.CPID, "to", to, "err", err)
	}
}

func ignoreEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (m *Migrator) peerError(to *state.Node, err error) error {
	if rpcerr.IsTransport(err) {
		return rpcerr.Unavailable("node %d (%s): %w; the process still runs on node %d", to.Num, to.Name, err, m.cfg.Self)
	}
	code := connect.CodeOf(err)
	if code == connect.CodeUnknown {
		code = connect.CodeInternal
	}
	return connect.NewError(code, fmt.Errorf("node %d (%s): %w; the process still runs on node %d", to.Num, to.Name, err, m.cfg.Self))
}

// rexecFileKey is how CRIU names the report channel of the init pid.
func rexecFileKey(init int) (string, error) {
	k, err := rexec.FileKey(init, rexec.StatusFD)
	if err != nil {
		return "", fmt.Errorf("the init's report channel: %w", err)
	}
	return k, nil
}

// outside is what FastestExcept must leave out for job j leaving this
// node: this node, and the nodes j may not run on.
func (m *Migrator) outside(j *procs.Job) []uint32 {
	except := []uint32{m.cfg.Self}
	if len(j.Nodes) == 0 {
		return except
	}
	for num := range m.cfg.FSM.Cluster().Nodes {
		if !slices.Contains(j.Nodes, num) {
			except = append(except, num)
		}
	}
	return except
}

// awaitLocation waits (a few seconds at most) until this node's copy of the
// state says that cpid runs on node want: the commit reached the leader,
// and what this node answers next (where_pid, kill, wait, logs routed from
// here) must already follow the move.
func (m *Migrator) awaitLocation(ctx context.Context, cpid vproc.CPID, want uint32) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		changed := m.cfg.FSM.Changed()
		if locate(m.cfg.FSM.Cluster(), cpid) == want {
			return
		}
		select {
		case <-ctx.Done():
			m.log.Warn("this node has not learnt where a moved process runs yet", "cpid", cpid, "node", want)
			return
		case <-changed:
		}
	}
}

// dumpFrozen runs dump on a frozen job, and once more after a thaw and a
// new freeze if it failed: rehearsals on a loaded machine saw CRIU fail
// now and then on a job that a second try dumped ("Unseizable non-zombie
// ... state D"; "Parasite failed to dump /proc/self/cgroup" on a job
// restored a moment before). What cannot be dumped fails twice. The images
// directory is emptied between the two.
func (m *Migrator) dumpFrozen(cpid vproc.CPID, rj *rexec.Job, s dumpSpec) error {
	err := dump(s)
	if err == nil || s.lazy != nil {
		// A lazy dump's CRIU was started for one dump (and the target
		// told it is post-copy): no second try.
		return err
	}
	s.started = nil // used
	m.log.Warn("CRIU could not dump the job; thawing, freezing and trying once more", "cpid", cpid, "err", err)
	if terr := rj.Thaw(); terr != nil {
		return errors.Join(err, terr)
	}
	if ferr := rj.Freeze(); ferr != nil {
		return errors.Join(err, ferr)
	}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		os.Remove(filepath.Join(s.dir, e.Name()))
	}
	return dump(s)
}
