package node

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/cfs"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/membership"
	"github.com/ssi-cluster/ssi/internal/metrics"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/placement"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/web"
)

// Load sources (see internal/placement).
const (
	LoadMachine = placement.LoadMachine
	LoadJobs    = placement.LoadJobs
)

// DefaultTokenTTL is how long a join token stays valid.
const DefaultTokenTTL = membership.DefaultTokenTTL

// Options run a daemon.
type Options struct {
	DataDir DataDir
	Socket  string // control socket path
	Listen  string // override of the TLS listen address (default: the node's ip:port)
	PIDFile string // written at start, removed at exit ("" for none)
	Load    string // load source: LoadMachine (default) or LoadJobs
	CRIU    string // the criu binary for migration ("": migrate.FindCRIU's search)
	Raft    RaftTiming
	CFS     CFSOptions
	// Metrics is where /metrics is served ("": not served; metrics.Auto:
	// a loopback address of this node, see metrics.LoopbackFor).
	Metrics string
	// Web is where the dashboard is served ("": not served; web.Auto).
	Web string
	Log *slog.Logger

	// PostCopyAbove: moves of jobs this large (bytes) are post-copy unless
	// asked otherwise (0: migrate.DefaultPostCopyAbove; < 0: never).
	PostCopyAbove int64
	// OwnExecStreams: exec streams to other nodes go over TLS connections
	// of their own (procspace lean.go) instead of pooled Connect streams.
	OwnExecStreams bool
}

// CFSOptions place the cluster filesystem (docs/CFS.md).
type CFSOptions struct {
	Mount  string // where this node mounts it ("": not mounted)
	Export string // what the serving node exports
	Server uint32 // the node that serves (0: node 1)
	// JobRoot gives jobs the cluster root as their / (docs/CFS.md).
	// A per-node setting for now: it will become a cluster setting.
	JobRoot bool
}

// Run starts the node and blocks until ctx ends or the node is shut down.
func Run(ctx context.Context, o Options) (err error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	meta, err := o.DataDir.LoadMeta()
	if err != nil {
		return err
	}
	id, err := o.DataDir.tls().LoadIdentity()
	if err != nil {
		return fmt.Errorf("node %d: %w", meta.Num, err)
	}
	lg := o.Log.With("node", meta.Num)
	if dir := os.Getenv("SSI_CPUPROFILE_DIR"); dir != "" {
		// Profiling aid for performance work: a CPU profile per node.
		if f, err := os.Create(filepath.Join(dir, fmt.Sprintf("cpu-node%d.pprof", meta.Num))); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
	}
	fail := func(err error) error { return fmt.Errorf("node %d: %w", meta.Num, err) }

	// A predecessor killed at the wrong moment may be stuck on its own
	// mount, holding the ports this daemon needs.
	if err := cfs.ReleaseStale(o.CFS.Mount, lg); err != nil {
		return fail(err)
	}
	listen := o.Listen
	if listen == "" {
		listen = meta.Addr()
	}
	mux, err := transport.Listen(listen, id, lg)
	if err != nil {
		return fail(err)
	}
	defer mux.Close()
	ctl, err := transport.ListenUnix(o.Socket, transport.AdminGID())
	if err != nil {
		return fail(fmt.Errorf("control socket: %w", err))
	}
	defer os.Remove(o.Socket)
	defer ctl.Close()
	st, err := openStores(o.DataDir)
	if err != nil {
		return fail(err)
	}
	defer st.Close()
	fsm := state.NewFSM(lg)
	jobs, err := procs.NewManager(procs.Options{Node: int(meta.Num), DataDir: string(o.DataDir), Log: lg, CgroupParent: jobCgroupParent(meta.Num, o.DataDir)})
	if err != nil {
		return fail(err)
	}
	defer jobs.Shutdown()
	src, err := placement.NewSource(o.Load, jobs)
	if err != nil {
		return fail(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: mux.RaftLayer(id), MaxPool: 3, Timeout: 5 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "raft-net", Level: hclog.Error, Output: os.Stderr}),
	})
	r, err := raft.NewRaft(raftConfig(meta.Num, o.Raft), fsm, st.logs, st.stable, st.snaps, trans)
	if err != nil {
		if herr := fsm.HaltErr(); herr != nil {
			return fail(herr) // a snapshot from a newer version
		}
		return fail(fmt.Errorf("start Raft: %w", err))
	}
	defer func() {
		if err := r.Shutdown().Error(); err != nil {
			lg.Warn("Raft shutdown", "err", err)
		}
	}()
	// The state a restored snapshot brought: the state machine does not
	// know its index, Raft does.
	snapIndex, _ := strconv.ParseUint(r.Stats()["last_snapshot_index"], 10, 64)
	peerHTTP := transport.NewPeerClient(id.ClientTLS([]string{transport.ProtoHTTP}))
	defer func() {
		if tr, ok := peerHTTP.Transport.(*http.Transport); ok {
			tr.CloseIdleConnections()
		}
	}()

	exit := make(chan struct{})
	var exitOnce sync.Once
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	bootID := hex.EncodeToString(b)
	p := wire(wiring{
		self: meta.Num, name: meta.Name, ip: meta.IPAddr, bootID: bootID, startIndex: lastCommand(st.logs, snapIndex),
		applied: func() uint64 { return max(fsm.AppliedIndex(), snapIndex) },
		fsm:     fsm, raft: r, ca: id.CA, jobs: jobs, load: src, dataDir: string(o.DataDir), criu: o.CRIU, pcAbove: o.PostCopyAbove, ownExec: o.OwnExecStreams,
		net: &peer.TLS{HTTP: peerHTTP, Resolve: resolver(fsm, r), Raw: func(proto string) *tls.Config { return id.ClientTLS([]string{proto}) }},
		cfs: cfs.Config{Self: meta.Num, Name: meta.Name, Server: o.CFS.Server, Export: o.CFS.Export, Mount: o.CFS.Mount, JobRoot: o.CFS.JobRoot,
			Exclude: []string{string(o.DataDir), filepath.Dir(o.Socket)}, IDsFile: filepath.Join(string(o.DataDir), "cfs-ids"), Conns: mux.CFSListener()},
		execConns: mux.ExecListener(),
		seeds:     func() []string { return seeds(r, meta) },
		bootstrap: meta.Bootstrap,
		bootstrapped: func() error {
			meta.Bootstrap = nil
			return o.DataDir.SaveMeta(meta)
		},
		exit: func() { exitOnce.Do(func() { close(exit) }) },
		log:  lg, baseLog: o.Log,
	})

	errLog := slog.NewLogLogger(lg.Handler(), slog.LevelDebug)
	peerSrv := &http.Server{
		Handler:           transport.RequireNodeCert(p.peerHandler),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          errLog,
		HTTP2:             transport.HTTP2Config(),
	}
	// Machines without a certificate (joining) get a server of their own:
	// only Join, small flow-control windows and few streams, so that what
	// an unauthenticated client can make the node buffer stays small.
	// No Read*/WriteTimeout: net/http would clear the connection's
	// deadline after the (already done) handshake, and with it the
	// lifetime the transport gave the connection.
	anonSrv := &http.Server{
		Handler:     p.joinHandler,
		IdleTimeout: 10 * time.Second,
		ConnState:   mux.AnonymousConnState,
		ErrorLog:    errLog,
		HTTP2:       &http.HTTP2Config{MaxConcurrentStreams: 4, MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 128 << 10},
	}
	anonLn := mux.AnonymousListener()
	ctlSrv := transport.NewUnixServer(p.controlHandler)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = peerSrv.Serve(mux.HTTPListener()) }()
	go func() { defer wg.Done(); _ = anonSrv.Serve(anonLn) }()
	go func() { defer wg.Done(); _ = ctlSrv.Serve(ctl) }()
	if o.PIDFile != "" {
		if err := os.WriteFile(o.PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			lg.Warn("cannot write PID file", "path", o.PIDFile, "err", err)
		}
		defer os.Remove(o.PIDFile)
	}
	if o.Metrics != "" {
		addr, explicit := o.Metrics, o.Metrics != metrics.Auto
		if !explicit {
			addr = nodeaddr.LoopbackFor(meta.IPAddr, metrics.DefaultPort)
		}
		ms, err := metrics.Listen(addr, p.reg, lg)
		switch {
		case err == nil:
			defer ms.Close()
			p.metricsURL = "http://" + ms.Addr().String() + "/metrics"
			lg.Info("serving metrics", "url", p.metricsURL)
		case explicit:
			return fail(err)
		default:
			lg.Warn("not serving metrics: the default address is taken; give --metrics-listen", "err", err)
		}
	}
	if o.Web != "" {
		addr, explicit := o.Web, o.Web != web.Auto
		if !explicit {
			addr = nodeaddr.LoopbackFor(meta.IPAddr, web.DefaultPort)
		}
		switch err := p.web.Listen(addr); {
		case err == nil:
			defer p.web.Close()
			lg.Info("serving the dashboard", "url", p.web.URL())
		case explicit:
			return fail(err)
		default:
			lg.Warn("not serving the dashboard: the default address is taken; give --web-listen", "err", err)
		}
	}
	loops, stopLoops := context.WithCancel(context.Background())
	waitLoops := p.start(loops)
	lg.Info("node started", "cluster", meta.ClusterName, "name", meta.Name, "listen", listen, "socket", o.Socket, "boot", bootID)

	var halted error
	select {
	case <-ctx.Done():
		lg.Info("stopping on signal")
	case <-exit:
		lg.Info("stopping: node shut down")
	case <-fsm.Halted():
		// Running on would leave this node with a state that differs from
		// the others' (docs/UPGRADES.md).
		halted = fsm.HaltErr()
		lg.Error("stopping: this node cannot apply the cluster's log; upgrade it", "err", halted)
	}
	stopLoops()
	waitLoops()
	// Let in-flight requests (such as the shutdown that stopped us) finish.
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = ctlSrv.Shutdown(sctx)
	if err := r.Shutdown().Error(); err != nil {
		lg.Warn("Raft shutdown", "err", err)
	}
	_ = peerSrv.Shutdown(sctx)
	_ = anonSrv.Close()
	mux.Close()
	wg.Wait()
	lg.Info("node stopped")
	if halted != nil {
		return fail(halted)
	}
	return nil
}

// lastCommand is the index of the last state-machine command in the local
// log (or, if there is none after it, of the snapshot): what this node must
// have applied before its state is the one it had. Raft's configuration
// changes and no-ops never reach the state machine, so they do not count.
func lastCommand(logs raft.LogStore, snapIndex uint64) uint64 {
	last, err := logs.LastIndex()
	if err != nil {
		return snapIndex
	}
	first, _ := logs.FirstIndex()
	var l raft.Log
	for i := last; i > snapIndex && i >= first && i > 0; i-- {
		if logs.GetLog(i, &l) == nil && l.Type == raft.LogCommand {
			return i
		}
	}
	return snapIndex
}

// resolver maps a node number to its cluster address: from the node table,
// or from Raft's configuration while this node has no table yet.
func resolver(fsm *state.FSM, r *raft.Raft) func(uint32) (string, bool) {
	return func(num uint32) (string, bool) {
		c := fsm.Cluster()
		if n, ok := c.Nodes[num]; ok {
			return membership.JoinHostPort(n.IPAddr, c.Config.Port), true
		}
		if f := r.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if s.ID == consensus.ServerID(num) {
					return string(s.Address), true
				}
			}
		}
		return "", false
	}
}

// seeds are the addresses to try when the leader is unknown: Raft's
// configuration if this node has one, else the members named at join.
func seeds(r *raft.Raft, m Meta) []string {
	var out []string
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.ID != consensus.ServerID(m.Num) {
				out = append(out, string(s.Address))
			}
		}
	}
	if len(out) == 0 {
		out = m.Seeds
	}
	return out
}

// jobCgroupParent is where this node's jobs' cgroups go: below ssi's own,
// one per node and data directory, since the nodes of several clusters may
// share a machine (ssi up) and a job's cgroup is named after its CPID.
func jobCgroupParent(num uint32, dir DataDir) string {
	abs, err := filepath.Abs(string(dir))
	if err != nil {
		abs = string(dir)
	}
	sum := sha256.Sum256([]byte(abs))
	return fmt.Sprintf("%s/node%d-%x", rexec.DefaultCgroupParent, num, sum[:4])
}
