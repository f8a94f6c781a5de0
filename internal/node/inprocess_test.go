package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/load"
	"github.com/ssi-cluster/ssi/internal/peer/memnet"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/state"
)

// These tests run the daemon's logic — the same wiring as Run — for
// several nodes in one process over internal/peer/memnet and Raft's
// in-memory stores, inside a testing/synctest bubble: time is the bubble's
// fake clock, so a failure timeout of one second takes no real second and
// detection times are exact.

// staticLoad is a load source that never changes.
type staticLoad struct{}

func (staticLoad) Current() load.Load { return load.Load{NCPU: 2, MemFree: 1 << 30} }
func (staticLoad) Run(ctx context.Context, _ time.Duration) error {
	<-ctx.Done()
	return nil
}

type testNode struct {
	num    uint32
	fsm    *state.FSM
	raft   *raft.Raft
	parts  *parts
	stop   context.CancelFunc
	wait   func()
	exited chan struct{}
}

type testCluster struct {
	t     *testing.T
	net   *memnet.Network
	ca    *pki.CA
	nodes map[uint32]*testNode
	log   *slog.Logger
	// wrap, when set, wraps every node's RPC handler (to inject faults).
	wrap func(num uint32, h http.Handler) http.Handler
}

var testConfig = state.Config{Voters: 3, MaxNodes: 16, Port: 7470, HeartbeatInterval: 200 * time.Millisecond,
	FailureTimeout: time.Second, NamePrefix: "t"}

func mac(num uint32) string { return fmt.Sprintf("0a:00:00:00:11:%02x", num) }

// newTestCluster starts node 1 as a new cluster and joins nodes 2..n the
// way `ssi join` does: registered by MAC with a token, admitted by the
// leader over the network, added to Raft once it heartbeats.
func newTestCluster(t *testing.T, n int) *testCluster { return newTestClusterWith(t, n, nil) }

// newTestClusterWith is newTestCluster with every node's RPC handler
// wrapped by wrap (nil: not wrapped).
func newTestClusterWith(t *testing.T, n int, wrap func(num uint32, h http.Handler) http.Handler) *testCluster {
	ca, err := pki.NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, net: memnet.New(), ca: ca, nodes: map[uint32]*testNode{},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), wrap: wrap}
	if testing.Verbose() {
		c.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	t.Cleanup(c.close)
	c.start(1, &state.Bootstrap{Name: "t", CAFingerprint: ca.Fingerprint(), Config: testConfig, Time: time.Now(),
		Node: state.NodeSpec{Num: 1, Name: "t1", HWAddr: mac(1), IPAddr: "10.0.0.1"}})
	c.waitState(1, 1, state.Up)
	for k := uint32(2); k <= uint32(n); k++ {
		tok, err := pki.NewToken(ca.Fingerprint())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.nodes[1].parts.leader.Apply(context.Background(), state.CmdAddNodes, state.AddNodes{Time: time.Now(),
			Nodes: []state.NodeSpec{{Num: k, HWAddr: mac(k), IPAddr: fmt.Sprintf("10.0.0.%d", k), TokenHash: tok.Hash(), TokenExpires: time.Now().Add(time.Hour)}}}); err != nil {
			t.Fatalf("register node %d: %v", k, err)
		}
		_, csr, err := pki.NewKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		// The joining machine calls Join on a member (here node 1).
		join := ssiv1connect.NewMembershipClient(c.httpFrom(k), "http://"+memnet.Addr(1))
		if _, err := join.Join(context.Background(), connect.NewRequest(&ssiv1.JoinRequest{TokenSecret: tok.Secret, Hwaddr: mac(k), CsrDer: csr})); err != nil {
			t.Fatalf("node %d joins: %v", k, err)
		}
		c.start(k, nil)
		c.waitState(1, k, state.Up)
	}
	return c
}

func (c *testCluster) httpFrom(k uint32) connect.HTTPClient {
	conn, err := c.net.Net(k).To(1)
	if err != nil {
		c.t.Fatal(err)
	}
	return conn.HTTP
}

func (c *testCluster) start(num uint32, boot *state.Bootstrap) {
	t := c.t
	store := raft.NewInmemStore()
	snaps := raft.NewInmemSnapshotStore()
	if boot != nil {
		_, tr := raft.NewInmemTransport(raft.ServerAddress(memnet.Addr(num)))
		conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: serverID(num), Address: raft.ServerAddress(memnet.Addr(num))}}}
		if err := raft.BootstrapCluster(raftConfig(num, RaftTiming{}), store, store, snaps, tr, conf); err != nil {
			t.Fatal(err)
		}
	}
	fsm := state.NewFSM(c.log)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: c.net.RaftLayer(num), MaxPool: 3, Timeout: 2 * time.Second,
		Logger: hclog.NewNullLogger(),
	})
	rc := raftConfig(num, RaftTiming{})
	rc.Logger = hclog.NewNullLogger()
	r, err := raft.NewRaft(rc, fsm, store, store, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	// No pool of ready inits: these tests start no migratable jobs, and
	// the pool's refill would outlive the bubble.
	jobs, err := procs.NewManager(procs.Options{Node: int(num), DataDir: t.TempDir(), Log: c.log, PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{num: num, fsm: fsm, raft: r, exited: make(chan struct{})}
	var once sync.Once
	tn.parts = wire(wiring{
		self: num, name: fmt.Sprintf("t%d", num), ip: fmt.Sprintf("10.0.0.%d", num), bootID: fmt.Sprintf("boot-%d-%d", num, time.Now().UnixNano()),
		fsm: fsm, raft: r, net: c.net.Net(num), ca: c.ca, jobs: jobs, load: staticLoad{},
		seeds:     func() []string { return []string{memnet.Addr(1)} },
		raftAddr:  memnet.Addr,
		bootstrap: boot, bootstrapped: func() error { return nil },
		exit: func() { once.Do(func() { close(tn.exited) }) },
		log:  c.log.With("node", num), baseLog: c.log,
	})
	h := tn.parts.peerHandler
	if c.wrap != nil {
		h = c.wrap(num, h)
	}
	c.net.Serve(num, h)
	ctx, cancel := context.WithCancel(context.Background())
	tn.stop, tn.wait = cancel, tn.parts.start(ctx)
	c.nodes[num] = tn
}

// kill stops a node as kill -9 would: no goodbye, connections drop.
func (c *testCluster) kill(num uint32) {
	tn := c.nodes[num]
	c.net.Stop(num)
	tn.stop()
	tn.wait()
	_ = tn.raft.Shutdown().Error()
	delete(c.nodes, num)
}

func (c *testCluster) close() {
	for num := range c.nodes {
		c.kill(num)
	}
	c.net.Close()
}

// waitState waits until node via has applied that node num is in state want.
func (c *testCluster) waitState(via, num uint32, want state.NodeState) time.Duration {
	c.t.Helper()
	start := time.Now()
	deadline := time.After(30 * time.Second)
	for {
		fsm := c.nodes[via].fsm
		ch := fsm.Changed()
		if n := fsm.Cluster().Nodes[num]; n != nil && n.State == want {
			return time.Since(start)
		}
		select {
		case <-ch:
		case <-deadline:
			c.t.Fatalf("node %d did not see node %d %s in 30s (fake clock): %+v", via, num, want, fsm.Cluster().Nodes[num])
		}
	}
}

// A change made on a follower reaches the leader through the one
// forwarding path; a placement question asked on a follower is answered by
// the leader.
func TestInProcessForwardingToTheLeader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTestCluster(t, 3)
		leader := c.nodes[1].parts.leader.LeaderNum()
		var follower uint32 = 2
		if leader == 2 {
			follower = 3
		}
		p := c.nodes[follower].parts
		if p.leader.IsLeader() {
			t.Fatalf("node %d leads; expected a follower", follower)
		}
		tok, _ := pki.NewToken(c.ca.Fingerprint())
		res, err := p.leader.Apply(context.Background(), state.CmdAddNodes, state.AddNodes{Time: time.Now(),
			Nodes: []state.NodeSpec{{HWAddr: mac(9), IPAddr: "10.0.0.9", TokenHash: tok.Hash(), TokenExpires: time.Now().Add(time.Hour)}}})
		if err != nil {
			t.Fatalf("AddNodes from follower %d: %v", follower, err)
		}
		var added []state.Node
		if err := res.Decode(&added); err != nil || len(added) != 1 || added[0].Num != 4 {
			t.Fatalf("added %+v (%v), want node 4", added, err)
		}
		// A refused command comes back refused, not as a transport error.
		if _, err := p.leader.Apply(context.Background(), state.CmdAddNodes, state.AddNodes{Time: time.Now(),
			Nodes: []state.NodeSpec{{HWAddr: mac(9), IPAddr: "10.0.0.10"}}}); !errors.Is(err, state.ErrExists) {
			t.Fatalf("duplicate MAC from a follower: %v, want a CodeExists refusal", err)
		}
		loads, err := p.place.Loads(context.Background(), consensus.Inbound{Origin: follower}, false)
		if err != nil || len(loads.Loads) != 4 {
			t.Fatalf("loads from follower %d: %v %v", follower, loads, err)
		}
	})
}

// A node cut off from the others is declared DOWN once the failure timeout
// has passed without its heartbeats, on the fake clock: no sooner, and
// within a few leader ticks after. Healed, it comes back as the same node.
func TestInProcessCutPeerIsDeclaredDownAndReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTestCluster(t, 3)
		synctest.Wait()
		leader := c.nodes[1].parts.leader.LeaderNum()
		var victim uint32 = 3
		if leader == 3 {
			victim = 2
		}
		c.net.Isolate(victim, 1, 2, 3)
		took := c.waitState(leader, victim, state.Down)
		timeout := testConfig.FailureTimeout
		if took < timeout-testConfig.HeartbeatInterval || took > timeout+500*time.Millisecond {
			t.Errorf("node %d was declared DOWN %v after the cut; want the failure timeout %v (minus at most one heartbeat interval, plus a few leader ticks)", victim, took, timeout)
		}
		for _, k := range []uint32{1, 2, 3} {
			if k != victim {
				c.waitState(k, victim, state.Down)
			}
		}
		c.net.Heal(victim)
		c.waitState(leader, victim, state.Up)
		ev := c.nodes[leader].fsm.Cluster().Events
		var seq []state.NodeState
		for _, e := range ev {
			if e.Num == victim {
				seq = append(seq, e.To)
			}
		}
		want := []state.NodeState{state.ComingUp, state.Up, state.Down, state.ComingUp, state.Up}
		if fmt.Sprint(seq) != fmt.Sprint(want) {
			t.Errorf("node %d went through %v, want %v", victim, seq, want)
		}
	})
}

// A member may not heartbeat for another node except through the
// forwarding path, which names the original sender.
func TestInProcessHeartbeatOnlyForItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTestCluster(t, 3)
		conn, err := c.net.Net(3).To(c.nodes[1].parts.leader.LeaderNum())
		if err != nil {
			t.Fatal(err)
		}
		cl := ssiv1connect.NewMembershipClient(conn.HTTP, conn.URL)
		_, err = cl.Heartbeat(context.Background(), connect.NewRequest(&ssiv1.HeartbeatRequest{Num: 2, BootId: "forged"}))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("node 3 heartbeating for node 2: %v, want PermissionDenied", err)
		}
		// Its own heartbeat is accepted.
		if _, err := cl.Heartbeat(context.Background(), connect.NewRequest(&ssiv1.HeartbeatRequest{Num: 3, BootId: "b"})); err != nil {
			t.Fatalf("node 3's own heartbeat: %v", err)
		}
	})
}

// When the leader dies, a change made on a follower waits for the
// election and then goes to the new leader.
func TestInProcessApplyRetriesThroughAnElection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTestCluster(t, 3)
		old := c.nodes[1].parts.leader.LeaderNum()
		c.kill(old)
		var follower uint32
		for k := range c.nodes {
			follower = k
			break
		}
		start := time.Now()
		tok, _ := pki.NewToken(c.ca.Fingerprint())
		_, err := c.nodes[follower].parts.leader.Apply(context.Background(), state.CmdAddNodes, state.AddNodes{Time: time.Now(),
			Nodes: []state.NodeSpec{{HWAddr: mac(9), IPAddr: "10.0.0.9", TokenHash: tok.Hash(), TokenExpires: time.Now().Add(time.Hour)}}})
		if err != nil {
			t.Fatalf("apply from node %d after leader %d died: %v", follower, old, err)
		}
		now := c.nodes[follower].parts.leader.LeaderNum()
		if now == old || now == 0 {
			t.Fatalf("leader after the election: %d (was %d)", now, old)
		}
		t.Logf("applied through new leader %d after %v (fake clock)", now, time.Since(start))
		c.waitState(follower, old, state.Down)
	})
}

// A change whose answer is lost after the leader committed it (here: the
// leader's handler resets the stream once Apply returned) is sent again
// with the same request ID and returns the first outcome: the node is
// added once and the caller gets its number, not "already registered".
func TestInProcessLostAnswerIsRetriedExactlyOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var lost atomic.Int32
		c := newTestClusterWith(t, 3, func(num uint32, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == ssiv1connect.ConsensusApplyProcedure && lost.CompareAndSwap(0, 1) {
					h.ServeHTTP(&discardWriter{header: http.Header{}}, r) // commit, then lose the answer
					panic(http.ErrAbortHandler)
				}
				h.ServeHTTP(w, r)
			})
		})
		leader := c.nodes[1].parts.leader.LeaderNum()
		var follower uint32 = 2
		if leader == 2 {
			follower = 3
		}
		lost.Store(0) // arm: the next forwarded Apply loses its answer
		tok, _ := pki.NewToken(c.ca.Fingerprint())
		res, err := c.nodes[follower].parts.leader.Apply(context.Background(), state.CmdAddNodes, state.AddNodes{Time: time.Now(),
			Nodes: []state.NodeSpec{{HWAddr: mac(9), IPAddr: "10.0.0.9", TokenHash: tok.Hash(), TokenExpires: time.Now().Add(time.Hour)}}})
		if lost.Load() != 1 {
			t.Fatal("no answer was lost: the test did not test anything")
		}
		if err != nil {
			t.Fatalf("AddNodes whose first answer was lost: %v, want the first outcome (success)", err)
		}
		var added []state.Node
		if err := res.Decode(&added); err != nil || len(added) != 1 || added[0].Num != 4 {
			t.Fatalf("added %+v (%v), want node 4", added, err)
		}
		n := 0
		for _, nd := range c.nodes[leader].fsm.Cluster().Nodes {
			if nd.HWAddr == mac(9) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d nodes with the MAC, want 1", n)
		}
	})
}

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ header http.Header }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// A read on a follower that lags (the leader's traffic to it is delayed)
// waits in ReadBarrier until it has applied every change acknowledged
// before the read: the change is missing from its state before the
// barrier and there after it.
func TestInProcessReadBarrierWaitsForAcknowledgedChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTestCluster(t, 3)
		leader := c.nodes[1].parts.leader.LeaderNum()
		var slow uint32
		for k := range c.nodes {
			if k != leader {
				slow = k
				break
			}
		}
		c.net.Delay(leader, slow, 300*time.Millisecond)
		tok, _ := pki.NewToken(c.ca.Fingerprint())
		if _, err := c.nodes[leader].parts.leader.Apply(context.Background(), state.CmdAddNodes, state.AddNodes{Time: time.Now(),
			Nodes: []state.NodeSpec{{HWAddr: mac(9), IPAddr: "10.0.0.9", TokenHash: tok.Hash(), TokenExpires: time.Now().Add(time.Hour)}}}); err != nil {
			t.Fatal(err)
		}
		has := func() bool {
			for _, nd := range c.nodes[slow].fsm.Cluster().Nodes {
				if nd.HWAddr == mac(9) {
					return true
				}
			}
			return false
		}
		if has() {
			t.Fatal("the lagging follower had the change already: the test did not test anything")
		}
		if err := c.nodes[slow].parts.leader.ReadBarrier(context.Background()); err != nil {
			t.Fatalf("ReadBarrier on node %d: %v", slow, err)
		}
		if !has() {
			t.Fatalf("node %d passed ReadBarrier without the change acknowledged before it", slow)
		}
		c.net.Heal(slow)
		time.Sleep(2 * time.Second) // let the delayed writes drain before the nodes stop
	})
}
