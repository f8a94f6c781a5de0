package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/version"
)

var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func testConfig() Config {
	return Config{Voters: 3, MaxNodes: 5, Port: 7470, HeartbeatInterval: 200 * time.Millisecond, FailureTimeout: time.Second}
}

type applier struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func newApplier(t *testing.T) *applier {
	a := &applier{t: t, f: NewFSM(discardLog)}
	a.must(CmdBootstrap, Bootstrap{Name: "ssi1", CAFingerprint: "fp", Config: testConfig(), Time: t0,
		Node: NodeSpec{HWAddr: "0A:00:00:00:11:D1", IPAddr: "192.168.64.141"}})
	return a
}

func (a *applier) apply(typ CommandType, cmd any) Result {
	a.t.Helper()
	b, err := Encode(typ, cmd)
	if err != nil {
		a.t.Fatal(err)
	}
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: b}).(Result)
}

func (a *applier) must(typ CommandType, cmd any) Result {
	a.t.Helper()
	r := a.apply(typ, cmd)
	if r.Err != nil {
		a.t.Fatalf("command %d refused: %v", typ, r.Err)
	}
	return r
}

func TestBootstrapCreatesNodeOne(t *testing.T) {
	a := newApplier(t)
	c := a.f.Cluster()
	n := c.Nodes[1]
	if c.Name != "ssi1" || n == nil || n.Name != "ssi1" || n.HWAddr != "0a:00:00:00:11:d1" || n.State != ComingUp || !n.InitNode || !n.Voter {
		t.Fatalf("after bootstrap: %+v %+v", c, n)
	}
	if r := a.apply(CmdBootstrap, Bootstrap{Name: "x", Config: testConfig(), Node: NodeSpec{HWAddr: "0a:00:00:00:00:09", IPAddr: "10.0.0.9"}}); !errors.Is(r.Error(), ErrExists) {
		t.Errorf("second bootstrap: %v", r.Err)
	}
}

func TestAddNodesAssignsNumbersAndNames(t *testing.T) {
	a := newApplier(t)
	r := a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{
		{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"},
		{HWAddr: "0a:00:00:00:11:d3", IPAddr: "192.168.64.143", Name: "web"},
	}})
	var added []Node
	if err := r.Decode(&added); err != nil {
		t.Fatal(err)
	}
	if len(added) != 2 || added[0].Num != 2 || added[0].Name != "ssi2" || added[1].Num != 3 || added[1].Name != "web" {
		t.Fatalf("added %+v", added)
	}
	if added[0].TokenHash != "" {
		t.Errorf("the result leaks the token hash")
	}
	if st := a.f.Cluster().Nodes[2].State; st != NeverUp {
		t.Errorf("new node state %s", st)
	}
}

func TestAddNodesRefusalsChangeNothing(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"}}})
	before := a.f.Cluster()
	cases := []struct {
		name string
		spec []NodeSpec
		want error
	}{
		{"bad mac", []NodeSpec{{HWAddr: "zz", IPAddr: "10.0.0.1"}}, ErrInvalid},
		{"bad ip", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0"}}, ErrInvalid},
		{"bad name", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.1", Name: "a b"}}, ErrInvalid},
		{"dup mac", []NodeSpec{{HWAddr: "0A:00:00:00:11:D2", IPAddr: "10.0.0.1"}}, ErrExists},
		{"dup ip", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "192.168.64.142"}}, ErrExists},
		{"dup name", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.1", Name: "SSI2"}}, ErrExists},
		{"dup num", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.1", Num: 2}}, ErrExists},
		{"dup in batch", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.1"}, {HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.2"}}, ErrExists},
		{"full", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.1"}, {HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2"},
			{HWAddr: "0a:00:00:00:00:03", IPAddr: "10.0.0.3"}, {HWAddr: "0a:00:00:00:00:04", IPAddr: "10.0.0.4"}}, ErrFull},
		{"num above max", []NodeSpec{{HWAddr: "0a:00:00:00:00:01", IPAddr: "10.0.0.1", Num: 6}}, ErrFull},
		{"empty", nil, ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := a.apply(CmdAddNodes, AddNodes{Time: t0, Nodes: tc.spec})
			if !errors.Is(r.Error(), tc.want) {
				t.Fatalf("got %v, want %v", r.Err, tc.want)
			}
			if after := a.f.Cluster(); !reflect.DeepEqual(before.Nodes, after.Nodes) || before.NextNum != after.NextNum {
				t.Errorf("a refused command changed the table")
			}
		})
	}
}

func TestNumbersAreNotReusedSilently(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2"}}})
	a.must(CmdRemoveNode, RemoveNode{Num: 2})
	r := a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:03", IPAddr: "10.0.0.3"}}})
	var added []Node
	_ = r.Decode(&added)
	if added[0].Num != 3 {
		t.Errorf("got number %d after removing 2, want 3", added[0].Num)
	}
	// Explicitly asking for 2 is allowed.
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:04", IPAddr: "10.0.0.4", Num: 2}}})
}

func TestJoinConsumesTokenAndPicksVoters(t *testing.T) {
	a := newApplier(t)
	exp := t0.Add(time.Hour)
	var specs []NodeSpec
	for i, mac := range []string{"0a:00:00:00:00:02", "0a:00:00:00:00:03", "0a:00:00:00:00:04"} {
		specs = append(specs, NodeSpec{HWAddr: mac, IPAddr: "10.0.0." + string(rune('2'+i)), TokenHash: "h" + mac, TokenExpires: exp})
	}
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: specs})
	if r := a.apply(CmdJoin, Join{HWAddr: specs[0].HWAddr, TokenHash: "wrong", Time: t0}); !errors.Is(r.Error(), ErrDenied) {
		t.Fatalf("wrong token: %v", r.Err)
	}
	if r := a.apply(CmdJoin, Join{HWAddr: "0a:00:00:00:00:99", TokenHash: "x", Time: t0}); !errors.Is(r.Error(), ErrNotFound) {
		t.Fatalf("unknown MAC: %v", r.Err)
	}
	if r := a.apply(CmdJoin, Join{HWAddr: specs[0].HWAddr, TokenHash: "h" + specs[0].HWAddr, Time: exp}); !errors.Is(r.Error(), ErrDenied) {
		t.Fatalf("expired token: %v", r.Err)
	}
	var voters []bool
	for _, s := range specs {
		var jr JoinResult
		if err := a.must(CmdJoin, Join{HWAddr: s.HWAddr, TokenHash: s.TokenHash, Time: t0}).Decode(&jr); err != nil {
			t.Fatal(err)
		}
		voters = append(voters, jr.Voter)
	}
	// Node 1 is a voter; with 3 voters wanted, nodes 2 and 3 vote, 4 does not.
	if !reflect.DeepEqual(voters, []bool{true, true, false}) {
		t.Errorf("voters %v", voters)
	}
	if r := a.apply(CmdJoin, Join{HWAddr: specs[0].HWAddr, TokenHash: specs[0].TokenHash, Time: t0}); !errors.Is(r.Error(), ErrDenied) {
		t.Errorf("token reuse: %v", r.Err)
	}
	if st := a.f.Cluster().Nodes[2].State; st != ComingUp {
		t.Errorf("joined node is %s", st)
	}
}

func TestSetStateIsConditional(t *testing.T) {
	a := newApplier(t)
	a.must(CmdSetState, SetState{Num: 1, To: Up, From: []NodeState{ComingUp}, BootID: "b1", Time: t0})
	if r := a.apply(CmdSetState, SetState{Num: 1, To: Up, From: []NodeState{Down}, Time: t0}); !errors.Is(r.Error(), ErrConflict) {
		t.Errorf("conditional transition from the wrong state: %v", r.Err)
	}
	if r := a.apply(CmdSetState, SetState{Num: 9, To: Up, Time: t0}); !errors.Is(r.Error(), ErrNotFound) {
		t.Errorf("unknown node: %v", r.Err)
	}
	if r := a.apply(CmdSetState, SetState{Num: 1, To: "SLEEPING", Time: t0}); !errors.Is(r.Error(), ErrInvalid) {
		t.Errorf("unknown state: %v", r.Err)
	}
	c := a.f.Cluster()
	if n := c.Nodes[1]; n.State != Up || n.BootID != "b1" || n.StateIndex != 2 {
		t.Errorf("node 1: %+v", n)
	}
	last := c.Events[len(c.Events)-1]
	if last.From != ComingUp || last.To != Up || last.Index != 2 {
		t.Errorf("last event %+v", last)
	}
}

func TestClusterShutdownMarksEveryRunningNodeDown(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2"}}})
	a.must(CmdClusterShutdown, ClusterShutdown{Time: t0, Reason: "test"})
	c := a.f.Cluster()
	if c.Nodes[1].State != Down || c.Nodes[2].State != NeverUp {
		t.Errorf("after cluster shutdown: 1=%s 2=%s", c.Nodes[1].State, c.Nodes[2].State)
	}
}

// Entries that every version refuses the same way are refused, not halted
// on (the unknown types are in entry_test.go).
func TestMalformedEntriesAreRefused(t *testing.T) {
	a := newApplier(t)
	before := a.f.Cluster()
	for _, data := range [][]byte{
		nil,
		{byte(CmdAddNodes), '{'},  // legacy, bad JSON
		{byte(CmdAddNodes), 0x00}, // stamp cut short
		{byte(CmdAddNodes), 0x00, 5, 0, 0, 0, 1, 0},                           // header shorter than the stamp
		{byte(CmdAddNodes), 0x00, 6, 0, 0, 0, 1},                              // header longer than the entry
		append(Entry{Type: CmdAddNodes, Needs: version.Current}.Bytes(), '{'), // stamped, bad JSON
	} {
		a.index++
		if r := a.f.ApplyEntry(a.index, data); !errors.Is(r.Error(), ErrInvalid) {
			t.Errorf("entry %q: got %v, want a refusal (%s)", data, r.Err, CodeInvalid)
		}
	}
	if err := a.f.HaltErr(); err != nil {
		t.Fatalf("a malformed entry halted the FSM: %v", err)
	}
	if !reflect.DeepEqual(before, a.f.Cluster()) {
		t.Errorf("malformed entries changed the state")
	}
	if got := a.f.AppliedIndex(); got != a.index {
		t.Errorf("applied index %d after refused entries, want %d", got, a.index)
	}
}

type sink struct {
	bytes.Buffer
	cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { return nil }

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2", TokenHash: "h", TokenExpires: t0}}})
	a.must(CmdSetState, SetState{Num: 1, To: Up, Time: t0})
	snap, err := a.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(nil)
	changed := g.Changed()
	if err := g.Restore(io.NopCloser(bytes.NewReader(s.Bytes()))); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(a.f.Cluster())
	got, _ := json.Marshal(g.Cluster())
	if !bytes.Equal(want, got) {
		t.Errorf("restored state differs:\n%s\n%s", want, got)
	}
	select {
	case <-changed:
	default:
		t.Errorf("restore did not signal a change")
	}
	// A restored node knows how far its state reaches (a linearizable
	// read waits for the leader's applied index: consensus.ReadBarrier).
	if got, want := g.AppliedIndex(), a.f.AppliedIndex(); got != want || want == 0 {
		t.Errorf("restored applied index %d, want the snapshot's %d", got, want)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte("{not json")))); err == nil {
		t.Errorf("garbage snapshot restored")
	}
}

func TestDefaultNamePrefix(t *testing.T) {
	for in, want := range map[string]string{"ssi1": "ssi", "ssi": "ssi", "my_cluster.2": "my-cluster", "42": "node", "a.b.": "a-b"} {
		if got := DefaultNamePrefix(in); got != want {
			t.Errorf("DefaultNamePrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := testConfig()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mut := range []func(*Config){
		func(c *Config) { c.Voters = 2 }, func(c *Config) { c.Voters = 9 }, func(c *Config) { c.MaxNodes = 0 },
		func(c *Config) { c.Port = 70000 }, func(c *Config) { c.FailureTimeout = c.HeartbeatInterval },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("config %+v accepted", c)
		}
	}
}

// FuzzApply feeds arbitrary log entries to a bootstrapped state machine: it
// must never panic, and a refused entry must change nothing.
func FuzzApply(f *testing.F) {
	for _, seed := range [][]byte{
		[]byte{byte(CmdAddNodes)}, []byte(`{"nodes":[{"hwaddr":"0a:00:00:00:00:02","ipaddr":"10.0.0.2"}]}`),
		append([]byte{byte(CmdSetState)}, []byte(`{"num":1,"to":"UP"}`)...),
		append([]byte{byte(CmdJoin)}, []byte(`{"hwaddr":"0a:00:00:00:11:d1","token_hash":""}`)...),
		append([]byte{byte(CmdRemoveNode)}, []byte(`{"num":1}`)...),
		{0xff}, {},
		mustEncode(CmdSetState, SetState{Num: 1, To: Up}),
		Entry{Type: 0x42, Needs: version.V{Major: 9}, Body: []byte("{}")}.Bytes(),
		Entry{Type: IgnoreUnknown | 0x42, Needs: version.V{Major: 9}, Body: []byte("{}")}.Bytes(),
		{byte(CmdSetState), 0x01, '{', '}'},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a := newApplier(t)
		before, _ := json.Marshal(a.f.Cluster())
		r := a.f.ApplyEntry(99, data)
		if r.Err != nil {
			after, _ := json.Marshal(a.f.Cluster())
			if !bytes.Equal(before, after) {
				t.Fatalf("refused entry %q changed the state", data)
			}
		}
		if halted := a.f.HaltErr() != nil; halted != (CheckEntry(data) != nil) {
			t.Fatalf("entry %q: FSM halted %v, but CheckEntry says %v", data, halted, CheckEntry(data))
		}
	})
}

func TestReplaceVoter(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{
		{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2", TokenHash: "a", TokenExpires: t0.Add(time.Hour)},
		{HWAddr: "0a:00:00:00:00:03", IPAddr: "10.0.0.3", TokenHash: "b", TokenExpires: t0.Add(time.Hour)},
		{HWAddr: "0a:00:00:00:00:04", IPAddr: "10.0.0.4", TokenHash: "c", TokenExpires: t0.Add(time.Hour)},
	}})
	for _, s := range []struct{ mac, h string }{{"0a:00:00:00:00:02", "a"}, {"0a:00:00:00:00:03", "b"}, {"0a:00:00:00:00:04", "c"}} {
		a.must(CmdJoin, Join{HWAddr: s.mac, TokenHash: s.h, Time: t0})
	}
	for n := uint32(1); n <= 4; n++ {
		a.must(CmdSetState, SetState{Num: n, To: Up, Time: t0})
	}
	// Node 2 votes and is UP: not replaceable yet.
	if r := a.apply(CmdReplaceVoter, ReplaceVoter{Down: 2, Up: 4, Time: t0}); !errors.Is(r.Error(), ErrConflict) {
		t.Fatalf("replacing an UP voter: %v", r.Err)
	}
	a.must(CmdSetState, SetState{Num: 2, To: Down, Time: t0})
	if r := a.apply(CmdReplaceVoter, ReplaceVoter{Down: 2, Up: 3, Time: t0}); !errors.Is(r.Error(), ErrConflict) {
		t.Fatalf("giving the vote to a voter: %v", r.Err)
	}
	if r := a.apply(CmdReplaceVoter, ReplaceVoter{Down: 2, Up: 9, Time: t0}); !errors.Is(r.Error(), ErrNotFound) {
		t.Fatalf("unknown node: %v", r.Err)
	}
	a.must(CmdReplaceVoter, ReplaceVoter{Down: 2, Up: 4, Time: t0, Reason: "test"})
	c := a.f.Cluster()
	if c.Nodes[2].Voter || !c.Nodes[4].Voter {
		t.Errorf("after replacement: node 2 voter=%v, node 4 voter=%v", c.Nodes[2].Voter, c.Nodes[4].Voter)
	}
}

// A command sent twice with one request ID is applied once; the second copy
// returns the first one's outcome, refusals included, and the window of
// remembered outcomes is bounded and survives a snapshot.
func TestRequestIDsMakeRetriesExactlyOnce(t *testing.T) {
	f := NewFSM(nil)
	boot, _ := Encode(CmdBootstrap, Bootstrap{Name: "ssi1", CAFingerprint: "fp", Config: testConfig(), Time: t0, Node: NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "192.168.64.141"}})
	if r := f.ApplyEntry(1, boot); r.Err != nil {
		t.Fatal(r.Err)
	}
	add := AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"}}}
	b, err := EncodeRequest(CmdAddNodes, add, "req-1")
	if err != nil {
		t.Fatal(err)
	}
	first := f.ApplyEntry(2, b)
	again := f.ApplyEntry(3, b)
	if first.Err != nil || again.Err != nil || string(first.Value) != string(again.Value) {
		t.Fatalf("first %+v, retry %+v: want the same success", first, again)
	}
	if n := len(f.Cluster().Nodes); n != 2 {
		t.Fatalf("%d nodes after a retried AddNodes, want 2", n)
	}
	// Without an ID the same command is a duplicate, as before.
	plain, _ := Encode(CmdAddNodes, add)
	if r := f.ApplyEntry(4, plain); r.Err == nil || r.Err.Code != CodeExists {
		t.Fatalf("the same AddNodes without an ID: %+v, want CodeExists", r)
	}
	// A refusal is an outcome too.
	dup, _ := EncodeRequest(CmdAddNodes, add, "req-2")
	r1, r2 := f.ApplyEntry(5, dup), f.ApplyEntry(6, dup)
	if r1.Err == nil || r2.Err == nil || r1.Err.Msg != r2.Err.Msg {
		t.Fatalf("refused request and its retry: %+v, %+v", r1, r2)
	}
	// Snapshot and restore keep the window.
	g := NewFSM(nil)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sk sink
	if err := snap.Persist(&sk); err != nil {
		t.Fatal(err)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader(sk.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if r := g.ApplyEntry(7, b); r.Err != nil || string(r.Value) != string(first.Value) {
		t.Fatalf("retry after restore: %+v", r)
	}
	// The window is bounded.
	for i := 0; i < MaxRequests+10; i++ {
		st, _ := EncodeRequest(CmdSetToken, SetToken{Num: 2, Hash: "h", Expires: t0}, fmt.Sprintf("t-%d", i))
		g.ApplyEntry(uint64(10+i), st)
	}
	if n := len(g.Cluster().Requests); n != MaxRequests {
		t.Errorf("%d outcomes remembered, want %d", n, MaxRequests)
	}
	if _, ok := g.Cluster().Outcome("req-1"); ok {
		t.Errorf("the oldest outcome was not forgotten")
	}
}
