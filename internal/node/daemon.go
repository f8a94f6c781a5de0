package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/clms"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Options run a daemon.
type Options struct {
	DataDir DataDir
	Socket  string // control socket path
	Listen  string // override of the TLS listen address (default: the node's ip:port)
	PIDFile string // written at start, removed at exit ("" for none)
	Load    string // load source: LoadMachine (default) or LoadJobs
	Raft    RaftTiming
	Log     *slog.Logger
}

// Daemon is one running node.
type Daemon struct {
	opts   Options
	meta   Meta
	id     *pki.Identity
	log    *slog.Logger
	bootID string

	fsm    *state.FSM
	raft   *raft.Raft
	stores *stores
	mux    *transport.Mux
	det    *clms.Detector
	dhcp   *dhcpService // this node's DHCP server (dhcp.go)
	procs  *procs.Manager
	load   loadSource
	placed placements // recent `ssi run` placements (leader only)

	peerHTTP *http.Client
	peersMu  sync.Mutex
	peers    map[string]ssiv1connect.PeerClient

	quiesced atomic.Bool // heartbeats stopped: the node is leaving
	exitOnce sync.Once
	exit     chan struct{} // closed to stop the daemon
}

// Run starts the node and blocks until ctx ends or the node is shut down.
func Run(ctx context.Context, o Options) error {
	d, err := newDaemon(o)
	if err != nil {
		return err
	}
	return d.run(ctx)
}

func newDaemon(o Options) (*Daemon, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	meta, err := o.DataDir.LoadMeta()
	if err != nil {
		return nil, err
	}
	id, err := o.DataDir.tls().LoadIdentity()
	if err != nil {
		return nil, fmt.Errorf("node %d: %w", meta.Num, err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	d := &Daemon{
		opts: o, meta: meta, id: id, bootID: hex.EncodeToString(b),
		log:   o.Log.With("node", meta.Num),
		det:   clms.NewDetector(state.DefaultFailureTimeout),
		peers: map[string]ssiv1connect.PeerClient{},
		exit:  make(chan struct{}),
	}
	d.peerHTTP = transport.NewPeerClient(id.ClientTLS([]string{transport.ProtoHTTP}))
	return d, nil
}

func (d *Daemon) run(ctx context.Context) (err error) {
	if dir := os.Getenv("SSI_CPUPROFILE_DIR"); dir != "" {
		// Profiling aid for performance work: a CPU profile per node.
		if f, err := os.Create(filepath.Join(dir, fmt.Sprintf("cpu-node%d.pprof", d.meta.Num))); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
	}
	listen := d.opts.Listen
	if listen == "" {
		listen = d.meta.Addr()
	}
	if d.mux, err = transport.Listen(listen, d.id, d.log); err != nil {
		return fmt.Errorf("node %d: %w", d.meta.Num, err)
	}
	defer d.mux.Close()
	ctl, err := transport.ListenUnix(d.opts.Socket, transport.AdminGID())
	if err != nil {
		return fmt.Errorf("node %d: control socket: %w", d.meta.Num, err)
	}
	defer os.Remove(d.opts.Socket)

	if d.stores, err = openStores(d.opts.DataDir); err != nil {
		ctl.Close()
		return fmt.Errorf("node %d: %w", d.meta.Num, err)
	}
	defer d.stores.Close()
	d.fsm = state.NewFSM(d.log)
	d.dhcp = newDHCPService(d)
	if d.procs, err = procs.NewManager(procs.Options{Node: int(d.meta.Num), DataDir: string(d.opts.DataDir), Log: d.log}); err != nil {
		ctl.Close()
		return fmt.Errorf("node %d: %w", d.meta.Num, err)
	}
	defer d.procs.Shutdown()
	if d.load, err = newLoadSource(d.opts.Load, d); err != nil {
		ctl.Close()
		return fmt.Errorf("node %d: %w", d.meta.Num, err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: d.mux.RaftLayer(d.id), MaxPool: 3, Timeout: 5 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "raft-net", Level: hclog.Error, Output: os.Stderr}),
	})
	d.raft, err = raft.NewRaft(raftConfig(d.meta.Num, d.opts.Raft), d.fsm, d.stores.logs, d.stores.stable, d.stores.snaps, trans)
	if err != nil {
		ctl.Close()
		return fmt.Errorf("node %d: start Raft: %w", d.meta.Num, err)
	}

	peerMux := http.NewServeMux()
	peerMux.Handle(ssiv1connect.NewPeerHandler(&peerService{d: d}, noGzip))
	peerSrv := &http.Server{
		Handler:           transport.RequireNodeCert(peerMux, ssiv1connect.PeerJoinProcedure),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slogErrorLog(d.log),
		HTTP2:             transport.HTTP2Config(),
	}
	ctlMux := http.NewServeMux()
	ctlMux.Handle(ssiv1connect.NewControlHandler(&controlService{d: d}, noGzip))
	ctlSrv := transport.NewUnixServer(ctlMux)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = peerSrv.Serve(d.mux.HTTPListener()) }()
	go func() { defer wg.Done(); _ = ctlSrv.Serve(ctl) }()
	if d.opts.PIDFile != "" {
		if err := os.WriteFile(d.opts.PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			d.log.Warn("cannot write PID file", "path", d.opts.PIDFile, "err", err)
		}
		defer os.Remove(d.opts.PIDFile)
	}

	loops, stopLoops := context.WithCancel(context.Background())
	var lwg sync.WaitGroup
	lwg.Add(4)
	go func() { defer lwg.Done(); _ = d.load.Run(loops, 500*time.Millisecond) }()
	go func() { defer lwg.Done(); d.heartbeatLoop(loops) }()
	go func() { defer lwg.Done(); d.leadership(loops) }()
	go func() { defer lwg.Done(); d.dhcp.run(loops) }()
	d.log.Info("node started", "cluster", d.meta.ClusterName, "name", d.meta.Name, "listen", listen, "socket", d.opts.Socket, "boot", d.bootID)

	select {
	case <-ctx.Done():
		d.log.Info("stopping on signal")
	case <-d.exit:
		d.log.Info("stopping: node shut down")
	}
	stopLoops()
	lwg.Wait()
	// Let in-flight requests (such as the shutdown that stopped us) finish.
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = ctlSrv.Shutdown(sctx)
	if err := d.raft.Shutdown().Error(); err != nil {
		d.log.Warn("Raft shutdown", "err", err)
	}
	_ = peerSrv.Shutdown(sctx)
	d.mux.Close()
	wg.Wait()
	if tr, ok := d.peerHTTP.Transport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
	d.log.Info("node stopped")
	return nil
}

// noGzip turns response compression off: cluster traffic is loopback or LAN,
// and compressing process output on every hop cost more CPU than the
// bandwidth it saved (docs/PERFORMANCE.md).
var noGzip = connect.WithCompression("gzip", nil, nil)

// requestExit stops the daemon after in-flight requests complete.
func (d *Daemon) requestExit() { d.exitOnce.Do(func() { close(d.exit) }) }

func (d *Daemon) config() state.Config {
	c := d.fsm.Config()
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = state.DefaultHeartbeatInterval
		c.FailureTimeout = state.DefaultFailureTimeout
	}
	return c
}

// leaderNum is the number of the current Raft leader, 0 if none is known.
func (d *Daemon) leaderNum() uint32 {
	_, id := d.raft.LeaderWithID()
	n, _ := strconv.ParseUint(string(id), 10, 32)
	return uint32(n)
}

func (d *Daemon) isLeader() bool { return d.raft.State() == raft.Leader }

// heartbeatLoop reports this node to the leader every heartbeat interval.
func (d *Daemon) heartbeatLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cfg := d.config()
		t.Reset(cfg.HeartbeatInterval)
		if d.quiesced.Load() {
			continue
		}
		l := d.load.Current()
		hb := clms.Heartbeat{Num: d.meta.Num, BootID: d.bootID, Applied: d.raft.AppliedIndex(),
			Load: l.Value, RunQueue: l.RunQueue, CPUBusy: l.CPUBusy, NCPU: l.NCPU, MemFree: l.MemFree}
		if d.isLeader() {
			d.det.Observe(hb, time.Now())
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, 2*cfg.HeartbeatInterval)
		if err := d.sendHeartbeat(hctx, hb); err != nil {
			d.log.Debug("heartbeat not delivered", "err", err)
		}
		cancel()
	}
}

// leadership starts the leader's duties when this node gains Raft
// leadership and stops them when it loses it; followers run no timers for it.
func (d *Daemon) leadership(ctx context.Context) {
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	d.raft.RegisterObserver(observer)
	defer d.raft.DeregisterObserver(observer)
	var prevLeader uint32 // the last other node seen leading
	var stop context.CancelFunc
	var wg sync.WaitGroup
	defer func() {
		if stop != nil {
			stop()
		}
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-obs:
			lo := o.Data.(raft.LeaderObservation)
			if n, err := strconv.ParseUint(string(lo.LeaderID), 10, 32); err == nil && uint32(n) != d.meta.Num {
				prevLeader = uint32(n)
			}
		case leader := <-d.raft.LeaderCh():
			if leader && stop == nil {
				stop = d.startLeading(ctx, &wg, prevLeader)
			} else if !leader && stop != nil {
				stop()
				wg.Wait()
				stop = nil
				d.log.Info("lost leadership")
			}
		}
	}
}

// startLeading runs the leader's loops until the returned function is called.
func (d *Daemon) startLeading(ctx context.Context, wg *sync.WaitGroup, prev uint32) context.CancelFunc {
	lctx, stop := context.WithCancel(ctx)
	wg.Add(2)
	go func() { defer wg.Done(); d.lead(lctx, prev) }()
	go func() { defer wg.Done(); d.membershipLoop(lctx) }()
	return stop
}

// lead turns heartbeats into agreed transitions while this node leads, and
// on first leadership of a new cluster applies the bootstrap command.
func (d *Daemon) lead(ctx context.Context, prev uint32) {
	d.det.SetTimeout(d.config().FailureTimeout)
	d.det.Reset(time.Now(), prev)
	d.log.Info("became leader", "previous", prev)
	if err := d.bootstrapIfNeeded(ctx); err != nil {
		d.log.Error("bootstrap failed", "err", err)
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if d.quiesced.Load() || !d.isLeader() {
			continue
		}
		d.det.SetTimeout(d.config().FailureTimeout)
		for _, cmd := range d.det.Decide(d.fsm.Cluster(), time.Now()) {
			res, _, err := d.applyLocal(state.CmdSetState, cmd)
			if err == nil {
				err = res.Error()
			}
			if err != nil {
				if !errors.Is(err, state.ErrConflict) {
					d.log.Warn("membership transition not applied", "target", cmd.Num, "to", cmd.To, "err", err)
				}
				continue
			}
			d.log.Info("membership transition", "target", cmd.Num, "to", cmd.To, "reason", cmd.Reason)
		}
	}
}

func (d *Daemon) bootstrapIfNeeded(ctx context.Context) error {
	if d.meta.Bootstrap == nil || d.fsm.ClusterName() != "" {
		return nil
	}
	res, _, err := d.applyLocal(state.CmdBootstrap, d.meta.Bootstrap)
	if err == nil {
		err = res.Error()
	}
	if err != nil && !errors.Is(err, state.ErrExists) {
		return err
	}
	d.meta.Bootstrap = nil
	return d.opts.DataDir.SaveMeta(d.meta)
}

// membershipLoop keeps Raft's configuration in line with the node table:
// live nodes that heartbeat are added as voters or non-voters as the table
// designates, removed nodes are removed.
func (d *Daemon) membershipLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !d.isLeader() || d.quiesced.Load() {
			continue
		}
		fut := d.raft.GetConfiguration()
		if fut.Error() != nil {
			continue
		}
		have := map[raft.ServerID]raft.Server{}
		for _, s := range fut.Configuration().Servers {
			have[s.ID] = s
		}
		c := d.fsm.Cluster()
		now := time.Now()
		for _, n := range c.SortedNodes() {
			sid := serverID(n.Num)
			s, in := have[sid]
			addr := raft.ServerAddress(joinHostPort(n.IPAddr, c.Config.Port))
			switch {
			case !n.State.Live() || !d.det.Alive(n.Num, now):
			case !in && n.Voter, in && n.Voter && s.Suffrage != raft.Voter:
				d.changeConfig("add voter", n.Num, d.raft.AddVoter(sid, addr, 0, 5*time.Second))
			case !in:
				d.changeConfig("add non-voter", n.Num, d.raft.AddNonvoter(sid, addr, 0, 5*time.Second))
			}
			// A voter that lost its vote (see replaceVoters) becomes a
			// non-voter, whether or not it is running.
			if in && !n.Voter && s.Suffrage == raft.Voter && n.Num != d.meta.Num {
				d.changeConfig("demote voter", n.Num, d.raft.DemoteVoter(sid, 0, 5*time.Second))
			}
		}
		d.replaceVoters(ctx, c, now)
		for sid := range have {
			num, _ := strconv.ParseUint(string(sid), 10, 32)
			if _, ok := c.Nodes[uint32(num)]; !ok && c.Name != "" {
				d.changeConfig("remove server", uint32(num), d.raft.RemoveServer(sid, 0, 5*time.Second))
			}
		}
	}
}

// replaceVoters gives the vote of a voter that has been DOWN longer than
// the cluster's VoterReplaceAfter to the lowest-numbered UP non-voter that
// heartbeats, one at a time.
func (d *Daemon) replaceVoters(ctx context.Context, c *state.Cluster, now time.Time) {
	after := c.Config.VoterReplaceAfter
	if after <= 0 {
		return
	}
	for _, dead := range c.SortedNodes() {
		if !dead.Voter || dead.State != state.Down || now.Sub(dead.StateSince) < after {
			continue
		}
		for _, n := range c.SortedNodes() {
			if n.Voter || n.State != state.Up || !d.det.Alive(n.Num, now) {
				continue
			}
			cmd := state.ReplaceVoter{Down: dead.Num, Up: n.Num, Time: now,
				Reason: fmt.Sprintf("takes the Raft vote of node %d, DOWN for %v", dead.Num, now.Sub(dead.StateSince).Round(time.Second))}
			if _, err := d.apply(ctx, state.CmdReplaceVoter, cmd); err != nil {
				d.log.Warn("voter replacement failed", "down", dead.Num, "up", n.Num, "err", err)
			} else {
				d.log.Info("voter replaced", "down", dead.Num, "up", n.Num)
			}
			return
		}
	}
}

func (d *Daemon) changeConfig(what string, num uint32, f raft.IndexFuture) {
	if err := f.Error(); err != nil {
		d.log.Warn("Raft configuration change failed", "change", what, "target", num, "err", err)
		return
	}
	d.log.Info("Raft configuration changed", "change", what, "target", num)
}
