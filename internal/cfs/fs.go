package cfs

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

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
	Server uint32 // the node that serves (DefaultServer)
	Export string // what the serving node exports
	Mount  string // where every node mounts it ("": not mounted here)
	// Exclude are paths the export must never show: the daemon's data
	// directory and socket, and the mount itself.
	Exclude []string
	// JobRoot: jobs get the mount as their / with the node's /proc, /dev,
	// /sys and /run bound in (jobroot.go). A per-node setting for now; it
	// will become a cluster setting.
	JobRoot bool
	Net     peer.Net
	FSM     *state.FSM
	Log     *slog.Logger
	// Conns are the sessions' own connections (transport's CFSListener;
	// nil: sessions come only as Cfs.Session streams).
	Conns net.Listener
}

// FS is this node's part: the server when this node serves, and the mount.
type FS struct {
	c   Config
	svc Service

	mu      sync.Mutex
	server  *Server
	client  *Client
	jobRoot *jobRoot
}

// New builds the part; Run starts it.
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
	return &FS{c: c}
}

// Service is the Cfs RPC service.
func (f *FS) Service() *Service { return &f.svc }

// Serves says whether this node serves the cluster filesystem.
func (f *FS) Serves() bool { return f.c.Self == f.c.Server && f.c.Export != "" }

// Mounted is where this node mounts it ("" when it does not).
func (f *FS) Mounted() string { return f.c.Mount }

// Run serves and mounts until ctx ends, then unmounts and stops serving.
func (f *FS) Run(ctx context.Context) {
	log := f.c.Log.With("subsystem", "cfs")
	if f.c.Conns != nil {
		go f.svc.ServeConns(f.c.Conns, log)
		defer f.c.Conns.Close()
	}
	if f.Serves() {
		srv, err := NewServer(ServerConfig{Export: f.c.Export, Exclude: f.c.Exclude, Log: log})
		if err != nil {
			log.Error("cannot serve the cluster filesystem; no node can mount it until this is fixed", "export", f.c.Export, "err", err)
		} else {
			f.mu.Lock()
			f.server = srv
			f.mu.Unlock()
			f.svc.Set(srv)
			log.Info("serving the cluster filesystem", "export", srv.Root())
			defer func() { f.svc.Set(nil); srv.Close() }()
		}
	}
	if f.c.Mount != "" {
		cfg := ClientConfig{Self: f.c.Self, Name: f.c.Name, Mount: f.c.Mount, Server: f.c.Server, Net: f.c.Net, Failure: f.failure, Log: log}
		f.mu.Lock()
		cfg.Local = f.server
		f.mu.Unlock()
		if cfg.Local == nil && f.Serves() {
			// This node should serve and cannot: there is nothing to mount.
		} else if cl, err := Mount(ctx, cfg); err != nil {
			log.Error("cannot mount the cluster filesystem", "mount", f.c.Mount, "err", err)
		} else {
			f.mu.Lock()
			f.client = cl
			f.mu.Unlock()
			log.Info("cluster filesystem mounted", "mount", f.c.Mount, "server", f.c.Server)
			defer cl.Close()
			if f.c.JobRoot {
				defer f.runJobRoot(ctx, log)() // undone before the unmount
			}
		}
	}
	f.watchDown(ctx)
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

// watchDown ends the sessions of nodes the cluster records DOWN (their
// locks are released even if their connection lingers) and, on a client,
// the session with a server recorded DOWN.
func (f *FS) watchDown(ctx context.Context) {
	if f.c.FSM == nil {
		<-ctx.Done()
		return
	}
	seen := map[uint32]uint64{}
	for {
		ch := f.c.FSM.Changed()
		f.mu.Lock()
		srv, cl := f.server, f.client
		f.mu.Unlock()
		if n, ok := f.c.FSM.Cluster().Nodes[f.c.Server]; ok && cl != nil && !f.Serves() && !n.State.Live() && seen[0] != n.StateIndex {
			seen[0] = n.StateIndex
			f.c.Log.Warn("the cluster filesystem's server is down: accesses fail until it is back", "server", f.c.Server)
			cl.Drop()
		}
		if srv != nil {
			for num, n := range f.c.FSM.Cluster().Nodes {
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
