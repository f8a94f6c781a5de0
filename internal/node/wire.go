package node

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/cfs"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/cvip"
	"github.com/ssi-cluster/ssi/internal/dhcpd"
	"github.com/ssi-cluster/ssi/internal/jobnet"
	"github.com/ssi-cluster/ssi/internal/membership"
	"github.com/ssi-cluster/ssi/internal/metrics"
	"github.com/ssi-cluster/ssi/internal/migrate"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/placement"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/procspace"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/web"
)

// wiring is what the subsystems are built from: the node's identity and
// the parts Run (or an in-process test) created.
type wiring struct {
	self         uint32
	name, ip     string
	bootID       string
	fsm          *state.FSM
	raft         *raft.Raft
	net          peer.Net
	ca           *pki.CA
	jobs         *procs.Manager
	dataDir      string // checkpoints of migrating jobs are staged below it
	criu         string // the criu binary ("": found as migrate.FindCRIU does)
	pcAbove      int64  // migrate.Config.PostCopyAbove
	ownExec      bool   // procspace.Config.OwnStreams
	load         placement.Source
	cfs          cfs.Config   // the cluster filesystem's placement (Net, FSM and Log are filled in)
	execConns    net.Listener // the exec streams' own connections (transport's ExecListener)
	seeds        func() []string
	raftAddr     func(num uint32) string // nil: ip:port
	startIndex   uint64                  // the last log index held at start
	applied      func() uint64           // how far the state machine has applied
	bootstrap    *state.Bootstrap
	bootstrapped func() error
	exit         func()
	log, baseLog *slog.Logger
}

// parts are one node's subsystems, wired to each other.
type parts struct {
	leader *consensus.Leader
	mem    *membership.Membership
	place  *placement.Placer
	space  *procspace.Space
	dhcp   *dhcpd.Service
	mig    *migrate.Migrator
	cfs    *cfs.FS
	cvip   *cvip.Service
	jobnet *jobnet.Manager
	load   placement.Source
	reg    *metrics.Registry // every subsystem's collectors (served by the daemon on --metrics-listen)

	metricsURL string // where the daemon serves reg ("": nowhere)
	web        *web.Web

	peerHandler    http.Handler // the node-to-node services (cluster certificate required)
	joinHandler    http.Handler // what a machine without a certificate may call: Join
	controlHandler http.Handler // the local CLI's Control service
}

// control is the Control service: each subsystem serves its own part.
type control struct {
	*nodesControl
	*procsControl
	*loadsControl
	*dhcpControl
	*migrateControl
	*cfsControl
}

type (
	nodesControl   = membership.Control
	procsControl   = procspace.Control
	loadsControl   = placement.Control
	dhcpControl    = dhcpd.Control
	migrateControl = migrate.Control
	cfsControl     = cfs.Control
)

var _ ssiv1connect.ControlHandler = control{}

// Largest messages each endpoint reads.
const (
	joinMessage    = 16 << 10 // a CSR, a MAC and a token secret
	smallMessage   = 64 << 10
	streamMessage  = 1 << 20  // exec stream chunks are at most 256 KiB
	commandMessage = 16 << 20 // a state-machine command (AddNodes of many nodes)
	cfsMessage     = 2 << 20  // a cluster filesystem WRITE of 1 MiB and its fields
)

// noGzip turns response compression off: cluster traffic is loopback or LAN,
// and compressing process output on every hop cost more CPU than the
// bandwidth it saved (docs/PERFORMANCE.md).
var noGzip = connect.WithCompression("gzip", nil, nil)

func wire(w wiring) *parts {
	p := &parts{load: w.load}
	p.leader = consensus.New(w.self, w.raft, w.net, w.log)
	p.leader.UseFSM(w.fsm, w.net)
	p.mem = membership.New(membership.Config{
		Self: w.self, BootID: w.bootID, FSM: w.fsm, Leader: p.leader, Net: w.net, CA: w.ca,
		Seeds: w.seeds, Load: w.load.Current, Bootstrap: w.bootstrap, Bootstrapped: w.bootstrapped,
		Exit: w.exit, RaftAddr: w.raftAddr, StartIndex: w.startIndex, Applied: w.applied, Log: w.log,
	})
	p.place = placement.New(placement.Config{Self: w.self, FSM: w.fsm, Leader: p.leader, Net: w.net, Heartbeats: p.mem.Heartbeats})
	p.space = procspace.New(procspace.Config{Self: w.self, Name: w.name, FSM: w.fsm, Net: w.net, Jobs: w.jobs, Placer: p.place, Log: w.log, Conns: w.execConns, OwnStreams: w.ownExec})
	w.cfs.Net, w.cfs.FSM, w.cfs.Leader, w.cfs.Log = w.net, w.fsm, p.leader, w.log
	p.cfs = cfs.New(w.cfs)
	w.jobs.SetJobRoot(p.cfs.JobRoot)
	p.jobnet = jobnet.New(jobnet.Config{Self: w.self, SelfIP: w.ip, FSM: w.fsm, Leader: p.leader, Running: w.jobs.Has, InitPid: w.jobs.InitPid, Log: w.log})
	w.jobs.SetNet(p.jobnet.Prepare)
	p.mig = migrate.New(migrate.Config{Self: w.self, FSM: w.fsm, Leader: p.leader, Net: w.net, Jobs: w.jobs, Streams: p.space, Placer: p.place, Loads: p.place, DataDir: w.dataDir, CRIU: w.criu, JobRoot: p.cfs.JobRoot, JobNet: p.jobnet, PostCopyAbove: w.pcAbove, Log: w.log})
	p.cvip = cvip.New(cvip.Config{Self: w.self, SelfIP: w.ip, FSM: w.fsm, Leader: p.leader, Net: w.net, Loads: p.place, Leaving: p.mem.Leaving, Log: w.log})
	p.dhcp = dhcpd.New(dhcpd.Config{Self: w.self, SelfIP: w.ip, FSM: w.fsm, Leader: p.leader, Leaving: p.mem.Leaving, Log: w.log, ServerLog: w.baseLog})

	// Metrics: each subsystem defines and registers its own.
	p.reg = metrics.New()
	peerRPC, ctlRPC := metrics.NewRPC("peer"), metrics.NewRPC("control")
	p.reg.Register(peerRPC, ctlRPC, p.leader.Collector(), p.mem.Collector(), placement.LoadCollector(w.load),
		w.jobs.Collector(), p.mig.Collector(), p.cfs.Collector(), p.cvip.Collector(), p.space.Collector())
	peerOpts := connect.WithInterceptors(peerRPC)

	// Every endpoint bounds the messages it reads (connect refuses a larger
	// one before decoding it).
	mux := http.NewServeMux()
	mux.Handle(ssiv1connect.NewMembershipHandler(p.mem.Service(), noGzip, peerOpts, connect.WithReadMaxBytes(smallMessage)))
	mux.Handle(ssiv1connect.NewConsensusHandler(p.leader.Service(), noGzip, peerOpts, connect.WithReadMaxBytes(commandMessage)))
	mux.Handle(ssiv1connect.NewReadIndexHandler(p.leader.ReadService(), noGzip, peerOpts, connect.WithReadMaxBytes(smallMessage)))
	mux.Handle(ssiv1connect.NewProcessHandler(p.space.Service(), noGzip, peerOpts, connect.WithReadMaxBytes(streamMessage)))
	mux.Handle(ssiv1connect.NewPlacementHandler(p.place.Service(), noGzip, peerOpts, connect.WithReadMaxBytes(smallMessage)))
	mux.Handle(ssiv1connect.NewMigrateHandler(p.mig.Service(), noGzip, peerOpts, connect.WithReadMaxBytes(streamMessage)))
	mux.Handle(ssiv1connect.NewPostCopyHandler(p.mig.PostCopy(), noGzip, peerOpts, connect.WithReadMaxBytes(streamMessage)))
	mux.Handle(ssiv1connect.NewCvipPeerHandler(p.cvip.Peer(), noGzip, peerOpts, connect.WithReadMaxBytes(smallMessage)))
	mux.Handle(ssiv1connect.NewCfsHandler(p.cfs.Service(), noGzip, peerOpts, connect.WithReadMaxBytes(cfsMessage)))
	p.peerHandler = mux

	join := http.NewServeMux()
	_, h := ssiv1connect.NewMembershipHandler(p.mem.Service(), noGzip, connect.WithReadMaxBytes(joinMessage))
	join.Handle(ssiv1connect.MembershipJoinProcedure, http.MaxBytesHandler(h, 2*joinMessage))
	join.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "a cluster node certificate is required", http.StatusUnauthorized)
	})
	p.joinHandler = join

	ctlImpl := control{p.mem.Control(), p.space.Control(), p.place.Control(), p.dhcp.Control(), p.mig.Control(), p.cfs.Control()}
	p.web = web.New(web.Config{Self: w.self, FSM: w.fsm, CA: w.ca, Control: ctlImpl, MetricsURL: func() string { return p.metricsURL }, Log: w.log})
	ctl := http.NewServeMux()
	ctl.Handle(ssiv1connect.NewControlHandler(ctlImpl, noGzip, connect.WithInterceptors(ctlRPC), connect.WithReadMaxBytes(commandMessage)))
	ctl.Handle(ssiv1connect.NewObserveHandler(p.web.Service(), noGzip, connect.WithInterceptors(ctlRPC), connect.WithReadMaxBytes(smallMessage)))
	ctl.Handle(ssiv1connect.NewCvipHandler(p.cvip.Control(), noGzip, connect.WithInterceptors(ctlRPC), connect.WithReadMaxBytes(smallMessage)))
	ctl.Handle(ssiv1connect.NewJobNetHandler(p.jobnet.Control(), noGzip, connect.WithInterceptors(ctlRPC), connect.WithReadMaxBytes(smallMessage)))
	p.controlHandler = ctl
	return p
}

// start runs the subsystems' loops until ctx ends; the returned function
// waits for them to stop.
func (p *parts) start(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){
		func(ctx context.Context) { _ = p.load.Run(ctx, 500*time.Millisecond) },
		p.leader.Run,
		p.mem.Run,
		p.dhcp.Run,
		p.cfs.Run,
		p.space.Run,
		p.web.Run,
		p.cvip.Run,
		p.jobnet.Run,
		p.mig.Run,
	} {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	return wg.Wait
}
