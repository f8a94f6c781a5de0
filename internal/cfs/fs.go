package cfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Defaults of a node's cluster filesystem.
const (
	DefaultMount  = "/cluster"
	DefaultExport = "/var/lib/ssi/root"
	DefaultServer = 1
)

// Config is one node's part in the cluster filesystem.
type Config struct {
	Self   uint32
	Name   string
	Server uint32 // the node that serves without a record in the cluster state (DefaultServer)
	Export string // what this node exports when it serves or replicates
	Mount  string // where every node mounts it ("": not mounted here)
	// Exclude are paths the export must never show: the daemon's data
	// directory and socket, and the mount itself.
	Exclude []string
	// IDsFile is where a server serving a copy keeps its files' ids (in
	// the daemon's data directory; "": not kept).
	IDsFile string
	// JobRoot: jobs get the mount as their / with the node's /proc, /dev,
	// /sys and /run bound in (jobroot.go). A per-node setting for now; it
	// will become a cluster setting.
	JobRoot bool
	Net     peer.Net
	FSM     *state.FSM
	Leader  *consensus.Leader // records replicas and failovers (nil: no replication)
	Log     *slog.Logger
	// Conns are the sessions' own connections (transport's CFSListener;
	// nil: sessions come only as Cfs.Session streams).
	Conns net.Listener
}

// FS is this node's part: the server when this node serves or
// replicates, and the mount.
type FS struct {
	c   Config
	svc Service

	mu       sync.Mutex
	server   *Server
	client   *Client
	jobRoot  *jobRoot
	target   uint32 // the serving node the mount follows
	repl     *replicator
	replStop func() // ends repl's loop and waits for it

	clusterJobRoot atomic.Bool // the cluster setting, as last applied here
	jobRootStop    func()      // takes the job root's binds away (nil: none)
	jrMu           sync.Mutex  // serializes followJobRoot
}

// New builds the part; Run starts it. With a Leader it registers the
// failover duty: while this node leads, a synced replica takes over from
// a server the cluster records DOWN.
func New(c Config) *FS {
	if c.Server == 0 {
		c.Server = DefaultServer
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Mount != "" {
		c.Exclude = append(c.Exclude, c.Mount)
	}
	f := &FS{c: c}
	if c.Leader != nil {
		c.Leader.OnLeading(f.failover)
	}
	return f
}

// Service is the Cfs RPC service.
func (f *FS) Service() *Service { return &f.svc }

// Record is who serves and who replicates, as this node knows it.
func (f *FS) Record() state.CFS {
	if f.c.FSM == nil {
		return state.CFS{Server: f.c.Server}
	}
	return f.c.FSM.CFSRecord(f.c.Server)
}

// Serves says whether this node serves the cluster filesystem.
func (f *FS) Serves() bool { return f.Record().Server == f.c.Self && f.c.Export != "" }

// Mounted is where this node mounts it ("" when it does not).
func (f *FS) Mounted() string { return f.c.Mount }

// Run serves (or replicates) and mounts until ctx ends, following the
// cluster's record of who serves, then unmounts and stops serving.
func (f *FS) Run(ctx context.Context) {
	log := f.c.Log.With("subsystem", "cfs")
	if f.c.Conns != nil {
		go f.svc.ServeConns(f.c.Conns, log)
		defer f.c.Conns.Close()
	}
	defer f.stopServing()
	rec := f.Record()
	f.reconcile(ctx, rec, log)
	if f.c.Mount != "" {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); f.mountLoop(ctx, log) }()
		defer func() {
			wg.Wait() // it ends with ctx
			f.mu.Lock()
			cl := f.client
			f.mu.Unlock()
			if cl != nil {
				f.stopJobRoot() // before the unmount
				cl.Close()
			}
		}()
	}
	f.follow(ctx, log)
}

// mountLoop mounts the cluster filesystem, trying again every couple of
// seconds while it cannot (the mount itself needs an answer from the
// server: a node that starts while its server is down mounts once the
// server is back or a replica took over).
func (f *FS) mountLoop(ctx context.Context, log *slog.Logger) {
	cfg := ClientConfig{Self: f.c.Self, Name: f.c.Name, Mount: f.c.Mount, Net: f.c.Net, Failure: f.failure, Log: log, Target: f.targetNow}
	for attempt := 0; ; attempt++ {
		if srv, _ := f.targetNow(); srv == f.c.Self && f.localServer() == nil {
			return // this node should serve and cannot: there is nothing to mount
		}
		cl, err := Mount(ctx, cfg)
		if err == nil {
			f.mu.Lock()
			f.client = cl
			f.mu.Unlock()
			srv, _ := f.targetNow()
			log.Info("cluster filesystem mounted", "mount", f.c.Mount, "server", srv)
			f.followJobRoot(ctx, log)
			return
		}
		if attempt == 0 {
			log.Error("cannot mount the cluster filesystem; trying again every 2s", "mount", f.c.Mount, "err", err)
		} else {
			log.Debug("cannot mount the cluster filesystem yet", "mount", f.c.Mount, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func (f *FS) localServer() *Server {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.server
}

// targetNow is the node the mount connects to, and the Server when it is
// this node.
func (f *FS) targetNow() (uint32, *Server) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.target == f.c.Self && f.server != nil && f.server.role.Load() == roleServe {
		return f.target, f.server
	}
	return f.target, nil
}

// reconcile makes this node do what the record says: serve (with its
// replicator), replicate, or neither; and points the mount at the server.
func (f *FS) reconcile(ctx context.Context, rec state.CFS, log *slog.Logger) {
	self := f.c.Self
	f.mu.Lock()
	srv := f.server
	if srv == nil && (rec.Server == self || rec.Replica == self) && f.c.Export != "" {
		var err error
		if srv, err = NewServer(ServerConfig{Export: f.c.Export, Exclude: f.c.Exclude, IDsFile: f.c.IDsFile, Log: log}); err != nil {
			log.Error("cannot open the cluster filesystem's export; this node can neither serve nor replicate it until this is fixed", "export", f.c.Export, "err", err)
			srv = nil
		} else {
			// Mounts take their locks back first after a restart or a
			// takeover (reclaim.go).
			srv.graceFor = grace(f.failure())
			if rec.Server == self {
				srv.setGrace(srv.graceFor)
			}
			f.server = srv
			f.svc.Set(srv)
		}
	}
	moved := f.target != rec.Server
	f.target = rec.Server
	cl := f.client
	f.mu.Unlock()

	if srv != nil {
		switch {
		case rec.Server == self:
			if srv.role.Load() != roleServe {
				log.Info("serving the cluster filesystem", "export", srv.Root(), "failovers", rec.Failovers)
			}
			srv.setRole(roleServe, 0, rec.Failovers)
		case rec.Replica == self:
			if srv.role.Load() != roleReplica || srv.primary.Load() != rec.Server {
				log.Info("replicating the cluster filesystem", "export", srv.Root(), "server", rec.Server)
			}
			srv.setRole(roleReplica, rec.Server, rec.Failovers)
		default:
			srv.setRole(roleIdle, 0, rec.Failovers)
		}
	}
	f.mu.Lock()
	rp := f.repl
	f.mu.Unlock()
	want := srv != nil && rec.Server == self && rec.Replica != 0
	if rp != nil && (!want || rp.to != rec.Replica) {
		f.stopReplicator()
		rp = nil
	}
	if want && rp == nil {
		f.startReplicator(ctx, srv, rec.Replica, log)
	}
	if moved && cl != nil {
		log.Info("the cluster filesystem moved; reconnecting", "server", rec.Server)
		cl.Drop()
	}
}

func (f *FS) startReplicator(ctx context.Context, srv *Server, to uint32, log *slog.Logger) {
	rp := &replicator{
		srv: srv, to: to, self: f.c.Self, record: f.Record, log: log, pending: map[uint64]chan *ssiv1.FsMessage{},
		apply: func(ctx context.Context, cmd state.SetCFS) error {
			if f.c.Leader == nil {
				return errors.New("no cluster state to record the replica in")
			}
			_, err := f.c.Leader.Apply(ctx, state.CmdSetCFS, cmd)
			return err
		},
		dial: func(ctx context.Context, deliver func(*ssiv1.FsMessage)) (link, error) {
			if d, ok := f.c.Net.(peer.Dialer); ok {
				return dialConn(ctx, d, to, f.c.Self, helloCopies, deliver)
			}
			return dialPeer(ctx, f.c.Net, to, f.c.Self, helloCopies, deliver)
		},
	}
	srv.changing.Lock()
	srv.repl.Store(rp)
	srv.changing.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); rp.run(rctx) }()
	f.mu.Lock()
	f.repl = rp
	f.replStop = func() {
		cancel()
		rp.pmu.Lock()
		l := rp.link
		rp.pmu.Unlock()
		if l != nil {
			l.close() // a round trip of a full copy in progress fails now
		}
		<-done
	}
	f.mu.Unlock()
}

// stopReplicator ends the replication loop (a full copy in progress
// stops at its next file), then lets changes go uncopied.
func (f *FS) stopReplicator() {
	f.mu.Lock()
	rp, stop := f.repl, f.replStop
	f.repl, f.replStop = nil, nil
	f.mu.Unlock()
	if rp == nil {
		return
	}
	stop()
	rp.srv.changing.Lock()
	rp.srv.repl.Store(nil)
	rp.srv.changing.Unlock()
}

func (f *FS) stopServing() {
	f.stopReplicator()
	f.mu.Lock()
	srv := f.server
	f.server = nil
	f.mu.Unlock()
	if srv != nil {
		f.svc.Set(nil)
		srv.Close()
	}
}

// failure is the cluster's failure-detection time (how long an access
// waits for a lost server before EIO).
func (f *FS) failure() time.Duration {
	if f.c.FSM != nil {
		if d := f.c.FSM.Config().FailureTimeout; d > 0 {
			return d
		}
	}
	return 5 * time.Second
}

// follow applies every change of the cluster state: the record of who
// serves (reconcile); the sessions of nodes the cluster records DOWN end
// (their locks are released even if their connection lingers); on a
// client, the session with a server recorded DOWN ends.
func (f *FS) follow(ctx context.Context, log *slog.Logger) {
	if f.c.FSM == nil {
		f.mu.Lock()
		cl := f.client
		f.mu.Unlock()
		if cl != nil {
			f.followJobRoot(ctx, log)
		}
		<-ctx.Done()
		return
	}
	seen := map[uint32]uint64{}
	for {
		ch := f.c.FSM.Changed()
		c := f.c.FSM.Cluster()
		rec := c.CFSRecord(f.c.Server)
		f.reconcile(ctx, rec, log)
		f.clusterJobRoot.Store(c.JobRoot)
		f.mu.Lock()
		srv, cl := f.server, f.client
		f.mu.Unlock()
		if cl != nil {
			f.followJobRoot(ctx, log)
		}
		if n, ok := c.Nodes[rec.Server]; ok && cl != nil && rec.Server != f.c.Self && !n.State.Live() && seen[0] != n.StateIndex {
			seen[0] = n.StateIndex
			log.Warn("the cluster filesystem's server is down: accesses fail until it is back or its replica takes over", "server", rec.Server)
			cl.Drop()
		}
		if srv != nil {
			for num, n := range c.Nodes {
				if !n.State.Live() && seen[num] != n.StateIndex {
					seen[num] = n.StateIndex
					srv.EndNode(num)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// failover is a leader duty: when the cluster records the serving node
// DOWN and its replica is UP and in sync, the replica takes over (and the
// old server, once back, becomes the replica and is copied to).
func (f *FS) failover(ctx context.Context, _ uint32) {
	for {
		ch := f.c.FSM.Changed()
		c := f.c.FSM.Cluster()
		rec := c.CFSRecord(f.c.Server)
		if s, r := c.Nodes[rec.Server], c.Nodes[rec.Replica]; rec.Synced && s != nil && r != nil && !s.State.Live() && r.State == state.Up {
			next := state.CFS{Server: rec.Replica, Replica: rec.Server, Failovers: rec.Failovers + 1}
			reason := fmt.Sprintf("node %d, which served the cluster filesystem, is %s", rec.Server, s.State)
			if _, err := f.c.Leader.Apply(ctx, state.CmdSetCFS, state.SetCFS{CFS: next, Expect: &rec, Reason: reason, Time: time.Now()}); err != nil {
				f.c.Log.Warn("cluster filesystem failover not recorded; retrying", "from", rec.Server, "to", rec.Replica, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
			f.c.Log.Warn("cluster filesystem failover: the replica serves now", "from", rec.Server, "to", rec.Replica, "reason", reason)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}
