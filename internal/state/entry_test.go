package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/version"
)

var discardLog = slog.New(slog.DiscardHandler)

func mustEncode(t CommandType, cmd any) []byte {
	b, err := Encode(t, cmd)
	if err != nil {
		panic(err)
	}
	return b
}

// raw applies data through raft's interface at the next index.
func (a *applier) raw(data []byte) Result {
	a.t.Helper()
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: data}).(Result)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A newer node's command: type 0x42, introduced in 0.9.0.
var (
	vFuture    = version.MustParse("0.9.0")
	futureBody = []byte(`{"num":1,"colour":"blue"}`)
	futureCmd  = Entry{Type: 0x42, Needs: vFuture, Body: futureBody}.Bytes()
)

func TestUnknownTypeHaltsTheFSM(t *testing.T) {
	var logged bytes.Buffer
	a := newApplier(t)
	a.f.log = slog.New(slog.NewTextHandler(&logged, nil))
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2"}}})
	before, appliedBefore := a.f.Cluster(), a.f.AppliedIndex()
	changed := a.f.Changed()
	if isClosed(a.f.Halted()) || a.f.HaltErr() != nil {
		t.Fatalf("halted before any unknown entry: %v", a.f.HaltErr())
	}

	r := a.raw(futureCmd)
	haltIndex := a.index
	if !errors.Is(r.Error(), ErrHalted) {
		t.Fatalf("unknown type: result %v, want a %s refusal", r.Err, CodeHalted)
	}
	if !isClosed(a.f.Halted()) {
		t.Fatalf("Halted() is not closed after the unknown entry")
	}
	if !isClosed(changed) {
		t.Errorf("the halt did not wake the waiters on Changed()")
	}
	var h *HaltError
	if !errors.As(a.f.HaltErr(), &h) {
		t.Fatalf("HaltErr() = %v, want a *HaltError", a.f.HaltErr())
	}
	want := HaltError{Index: haltIndex, Type: 0x42, Node: version.Current, Needs: vFuture, Detail: h.Detail}
	if *h != want {
		t.Errorf("HaltErr() = %+v, want %+v", *h, want)
	}
	msg := h.Error()
	for _, part := range []string{"log entry 3 ", "command type unknown (66)", "runs ssi " + version.Version, "introduced in ssi 0.9.0", "Upgrade this node to ssi >= 0.9.0"} {
		if !strings.Contains(msg, part) {
			t.Errorf("the halt message does not say %q:\n%s", part, msg)
		}
	}
	if r.Err.Msg != msg || !errors.Is(a.f.HaltErr(), ErrHalted) {
		t.Errorf("the refusal %q does not carry the halt message %q", r.Err.Msg, msg)
	}
	if l := logged.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "index=3") || !strings.Contains(l, "needs_version=0.9.0") {
		t.Errorf("the halt was not logged as an error with its index and version:\n%s", l)
	}

	// Nothing later is applied: good commands are refused, the state and
	// the applied index stay where they were.
	for _, data := range [][]byte{
		mustEncode(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:03", IPAddr: "10.0.0.3"}}}),
		mustEncode(CmdSetState, SetState{Num: 1, To: Up, Time: t0}),
		{byte(IgnoreUnknown | 0x42), '{', '}'},
		nil,
	} {
		if r := a.raw(data); !errors.Is(r.Error(), ErrHalted) || r.Err.Msg != msg {
			t.Errorf("entry %d after the halt: %v, want the halt refusal", a.index, r.Err)
		}
	}
	if !reflect.DeepEqual(before, a.f.Cluster()) {
		t.Errorf("entries after the halt changed the state")
	}
	if got := a.f.AppliedIndex(); got != appliedBefore {
		t.Errorf("applied index %d after the halt, want %d (the last entry applied)", got, appliedBefore)
	}

	// No snapshot (it would claim the entries it skipped) and no restore.
	if _, err := a.f.Snapshot(); !errors.Is(err, ErrHalted) {
		t.Errorf("Snapshot of a halted FSM: %v, want the halt error", err)
	}
	snap, _ := json.Marshal(emptyCluster())
	if err := a.f.Restore(io.NopCloser(bytes.NewReader(snap))); !errors.Is(err, ErrHalted) {
		t.Errorf("Restore into a halted FSM: %v, want the halt error", err)
	}
	if !reflect.DeepEqual(before, a.f.Cluster()) {
		t.Errorf("a restore into the halted FSM changed the state")
	}
}

func TestKnownTypeStampedNewerHalts(t *testing.T) {
	a := newApplier(t)
	body, _ := json.Marshal(AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2"}}})
	r := a.raw(Entry{Type: CmdAddNodes, Needs: version.V{Major: 9, Minor: 1}, Body: body}.Bytes())
	if !errors.Is(r.Error(), ErrHalted) {
		t.Fatalf("AddNodes stamped 9.1.0: %v, want a halt", r.Err)
	}
	var h *HaltError
	if !errors.As(a.f.HaltErr(), &h) || h.Type != CmdAddNodes || h.Needs != (version.V{Major: 9, Minor: 1}) {
		t.Fatalf("HaltErr() = %v", a.f.HaltErr())
	}
	if !strings.Contains(h.Error(), "AddNodes (2)") || !strings.Contains(h.Error(), ">= 9.1.0") {
		t.Errorf("message: %s", h)
	}
	if n := len(a.f.Cluster().Nodes); n != 1 {
		t.Errorf("the entry was applied anyway: %d nodes", n)
	}
}

// Legacy entries do not say which version they need; other formats are
// unreadable by definition. Both halt, and the message says so.
func TestUnreadableEntriesHalt(t *testing.T) {
	for name, data := range map[string][]byte{
		"legacy unknown type": {0x42, '{', '}'},
		"future format":       {byte(CmdSetState), 0x01, 0, 3, 0, 0, '{', '}'},
	} {
		t.Run(name, func(t *testing.T) {
			a := newApplier(t)
			before := a.f.Cluster()
			if r := a.raw(data); !errors.Is(r.Error(), ErrHalted) {
				t.Fatalf("%q: %v, want a halt", data, r.Err)
			}
			var h *HaltError
			if !errors.As(a.f.HaltErr(), &h) || !h.Needs.IsZero() || h.Index != a.index {
				t.Fatalf("HaltErr() = %+v", a.f.HaltErr())
			}
			if !strings.Contains(h.Error(), "does not say which ssi version") || !strings.Contains(h.Error(), "Upgrade this node to the ssi version the other nodes run") {
				t.Errorf("message: %s", h)
			}
			if !reflect.DeepEqual(before, a.f.Cluster()) {
				t.Errorf("the entry changed the state")
			}
		})
	}
}

func TestSkippableUnknownTypesAreSkipped(t *testing.T) {
	var logged bytes.Buffer
	a := newApplier(t)
	a.f.log = slog.New(slog.NewTextHandler(&logged, nil))
	before := a.f.Cluster()
	for _, data := range [][]byte{
		{byte(IgnoreUnknown | 0x42), '{', '}'}, // legacy
		Entry{Type: IgnoreUnknown | 0x42, Needs: vFuture, Body: futureBody}.Bytes(),
		{byte(IgnoreUnknown | 0x42), 0x01, 'x'}, // a future format
	} {
		if r := a.raw(data); r.Err != nil {
			t.Errorf("skippable entry %q: %v", data, r.Err)
		}
		if got := a.f.AppliedIndex(); got != a.index {
			t.Errorf("applied index %d after skipping entry %d", got, a.index)
		}
	}
	if err := a.f.HaltErr(); err != nil || isClosed(a.f.Halted()) {
		t.Fatalf("a skippable entry halted the FSM: %v", err)
	}
	if !reflect.DeepEqual(before, a.f.Cluster()) {
		t.Errorf("skipped entries changed the state")
	}
	if n := strings.Count(logged.String(), "level=WARN"); n != 3 {
		t.Errorf("%d warnings for 3 skipped entries:\n%s", n, logged.String())
	}
	// The log goes on.
	a.must(CmdSetState, SetState{Num: 1, To: Up, Time: t0})
}

// legacy encodes a command the way versions before stamps did.
func legacy(t CommandType, cmd any) []byte {
	b, err := json.Marshal(cmd)
	if err != nil {
		panic(err)
	}
	return append([]byte{byte(t)}, b...)
}

// A log written before stamps, a stamped one and a mix of both give the
// same state.
func TestLegacyEntriesStillApply(t *testing.T) {
	exp := t0.Add(time.Hour)
	cmds := []struct {
		t   CommandType
		cmd any
	}{
		{CmdBootstrap, Bootstrap{Name: "ssi1", CAFingerprint: "fp", Config: testConfig(), Time: t0, Node: NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "192.168.64.141"}}},
		{CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2", TokenHash: "h", TokenExpires: exp}}}},
		{CmdJoin, Join{HWAddr: "0a:00:00:00:00:02", TokenHash: "h", Time: t0}},
		{CmdSetState, SetState{Num: 2, To: Up, Time: t0}},
		{CmdSetDHCP, SetDHCP{Config: DHCPConfig{Interface: "br0"}, Fields: []string{"interface"}}},
		{CmdRecordLease, RecordLease{Lease: Lease{HWAddr: "0a:00:00:00:00:02", IPAddr: "10.0.0.2", Expires: exp}}},
		{CmdSetToken, SetToken{Num: 2, Hash: "h2", Expires: exp}},
		{CmdClusterShutdown, ClusterShutdown{Time: t0, Reason: "test"}},
	}
	run := func(encode func(i int, t CommandType, cmd any) []byte) *Cluster {
		f := NewFSM(discardLog)
		for i, c := range cmds {
			if r := f.ApplyEntry(uint64(i+1), encode(i, c.t, c.cmd)); r.Err != nil {
				t.Fatalf("command %v: %v", c.t, r.Err)
			}
		}
		return f.Cluster()
	}
	old := run(func(_ int, t CommandType, cmd any) []byte { return legacy(t, cmd) })
	stamped := run(func(_ int, t CommandType, cmd any) []byte { return mustEncode(t, cmd) })
	mixed := run(func(i int, t CommandType, cmd any) []byte {
		if i%2 == 0 {
			return legacy(t, cmd)
		}
		return mustEncode(t, cmd)
	})
	if old.Nodes[2] == nil || old.Nodes[2].State != Down || old.DHCP == nil || len(old.Leases) != 1 {
		t.Fatalf("the legacy log was not applied: %+v", old)
	}
	if !reflect.DeepEqual(old, stamped) || !reflect.DeepEqual(old, mixed) {
		t.Errorf("legacy, stamped and mixed logs give different states:\n%+v\n%+v\n%+v", old, stamped, mixed)
	}
	if old.Requires != "0.1.0" {
		t.Errorf("requires %q after 0.1.0 commands", old.Requires)
	}
}

func TestEncodeLayoutAndRoundTrip(t *testing.T) {
	cmd := SetState{Num: 7, To: GoingDown, From: []NodeState{Up}, Reason: "r", Time: t0}
	b, err := Encode(CmdSetState, cmd)
	if err != nil {
		t.Fatal(err)
	}
	// type, marker, header length, 0.1.0 as three big-endian uint16.
	if want := []byte{3, 0x00, 6, 0, 0, 0, 1, 0, 0, '{'}; !bytes.HasPrefix(b, want) {
		t.Fatalf("entry starts % x, want % x", b[:min(len(b), len(want))], want)
	}
	e, err := DecodeEntry(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != CmdSetState || e.Legacy || e.Needs != v0_1_0 {
		t.Errorf("decoded %+v", e)
	}
	var got SetState
	if err := json.Unmarshal(e.Body, &got); err != nil || !reflect.DeepEqual(got, cmd) {
		t.Errorf("body %s decodes to %+v (%v), want %+v", e.Body, got, err, cmd)
	}
	if !bytes.Equal(e.Bytes(), b) {
		t.Errorf("re-encoding changed the entry")
	}

	// A later version's longer header: its extra fields are skipped.
	longer := append([]byte{byte(CmdSetState), 0x00, 9, 0, 0, 0, 1, 0, 0, 0xAA, 0xBB, 0xCC}, e.Body...)
	if e2, err := DecodeEntry(longer); err != nil || e2.Needs != v0_1_0 || !bytes.Equal(e2.Body, e.Body) {
		t.Errorf("longer header: %+v, %v", e2, err)
	}

	// Legacy entries, including ones whose JSON starts with whitespace.
	for _, data := range [][]byte{legacy(CmdSetState, cmd), append([]byte{3, '\n', ' '}, e.Body...), {3}} {
		l, err := DecodeEntry(data)
		if err != nil || !l.Legacy || l.Type != CmdSetState || !l.Needs.IsZero() || !bytes.Equal(l.Body, data[1:]) {
			t.Errorf("legacy %q: %+v, %v", data, l, err)
		}
		if !bytes.Equal(l.Bytes(), data) {
			t.Errorf("legacy %q re-encodes as %q", data, l.Bytes())
		}
	}
	if _, err := DecodeEntry([]byte{3, 0x05, '{'}); !errors.Is(err, ErrFutureEntryFormat) {
		t.Errorf("reserved format byte: %v", err)
	}
	if _, err := DecodeEntry(nil); !errors.Is(err, ErrMalformedEntry) {
		t.Errorf("empty entry: %v", err)
	}
}

func TestEncodeRefusesTypesOutsideTheTable(t *testing.T) {
	if b, err := Encode(0x42, struct{}{}); err == nil || !strings.Contains(err.Error(), "version table") {
		t.Errorf("Encode of an unlisted type: %q, %v", b, err)
	}
}

// The numbers are in every log on disk: this pins them.
func TestCommandTypesAreNeverRenumbered(t *testing.T) {
	pinned := map[CommandType]byte{
		CmdBootstrap: 1, CmdAddNodes: 2, CmdSetState: 3, CmdSetToken: 4, CmdJoin: 5, CmdRemoveNode: 6,
		CmdClusterShutdown: 7, CmdSetDHCP: 8, CmdRecordLease: 9, CmdReplaceVoter: 10, CmdSetLocation: 11, CmdSetLoadLevel: 12, CmdSetBlocked: 13, CmdMoved: 14, CmdSetCFS: 30, CmdSetJobRoot: 31, CmdAddVIP: 20, CmdRemoveVIP: 21, CmdSetDirector: 22, CmdSetVIP: 23, IgnoreUnknown: 0x80,
		CmdSetNetPool: 40, CmdAssignNetAddr: 41, CmdReleaseNetAddr: 42,
	}
	for typ, n := range pinned {
		if byte(typ) != n {
			t.Errorf("command type %v is %d, it was %d: never renumber", typ, byte(typ), n)
		}
	}
	for typ := range commands {
		if _, ok := pinned[typ]; !ok {
			t.Errorf("command type %v is in the version table but not pinned here: add it", typ)
		}
	}
}

// Every row of the version table is applied (never halted on), no newer
// than this build, and every other type halts unless skippable.
func TestVersionTable(t *testing.T) {
	names := map[string]bool{}
	for typ, info := range commands {
		if info.since.IsZero() || version.Current.Less(info.since) {
			t.Errorf("%v was introduced in %v, not a release up to this build's %s", typ, info.since, version.Version)
		}
		if names[info.name] {
			t.Errorf("two command types are named %s", info.name)
		}
		names[info.name] = true
	}
	for i := 0; i < 256; i++ {
		typ := CommandType(i)
		a := newApplier(t)
		data := Entry{Type: typ, Needs: version.Current, Body: []byte("{}")}.Bytes()
		check := CheckEntry(data)
		a.raw(data)
		_, known := Introduced(typ)
		halted := a.f.HaltErr() != nil
		switch {
		case known && (halted || check != nil):
			t.Errorf("%v is in the version table but halts the FSM: %v", typ, a.f.HaltErr())
		case !known && typ.Skippable() && (halted || check != nil):
			t.Errorf("skippable %v halts the FSM: %v", typ, a.f.HaltErr())
		case !known && !typ.Skippable() && (!halted || check == nil):
			t.Errorf("unknown %v does not halt the FSM (CheckEntry: %v)", typ, check)
		}
	}
}

func TestCheckEntry(t *testing.T) {
	if err := CheckEntry(mustEncode(CmdSetState, SetState{Num: 1})); err != nil {
		t.Errorf("a current command: %v", err)
	}
	err := CheckEntry(futureCmd)
	var h *HaltError
	if !errors.As(err, &h) || h.Index != 0 || h.Needs != vFuture || !strings.Contains(err.Error(), "upgrade every node before using the command") {
		t.Errorf("a newer command: %v", err)
	}
}

func restore(f *FSM, snap string) error {
	return f.Restore(io.NopCloser(strings.NewReader(snap)))
}

func TestSnapshotOfANewerVersionHalts(t *testing.T) {
	for name, req := range map[string]string{"newer": "0.9.0", "unreadable": "0.9.0-rc1"} {
		t.Run(name, func(t *testing.T) {
			f := NewFSM(discardLog)
			err := restore(f, `{"name":"ssi1","nodes":{},"next_num":2,"requires":"`+req+`"}`)
			var h *HaltError
			if !errors.As(err, &h) || !h.Snapshot || !isClosed(f.Halted()) || f.HaltErr() == nil {
				t.Fatalf("restore of a snapshot requiring %s: %v (halted: %v)", req, err, f.HaltErr())
			}
			if f.ClusterName() != "" {
				t.Errorf("the refused snapshot was restored")
			}
			if name == "newer" && !strings.Contains(err.Error(), "Upgrade this node to ssi >= 0.9.0") {
				t.Errorf("message: %v", err)
			}
			if r := f.ApplyEntry(1, mustEncode(CmdBootstrap, Bootstrap{})); !errors.Is(r.Error(), ErrHalted) {
				t.Errorf("apply after the refused snapshot: %v", r.Err)
			}
		})
	}
}

// A snapshot of a newer version whose state needs no newer command is
// restored; fields this version does not know are dropped (UPGRADES.md).
func TestSnapshotUnknownFieldsAreIgnored(t *testing.T) {
	f := NewFSM(discardLog)
	snap := `{"name":"ssi1","nodes":{"1":{"num":1,"name":"ssi1","state":"UP","shoe_size":44}},"next_num":2,"requires":"0.1.0","weather":"fine"}`
	if err := restore(f, snap); err != nil {
		t.Fatal(err)
	}
	c := f.Cluster()
	if c.Name != "ssi1" || c.Nodes[1] == nil || c.Nodes[1].State != Up || c.Requires != "0.1.0" || f.HaltErr() != nil {
		t.Errorf("restored %+v (halt: %v)", c, f.HaltErr())
	}
	// Snapshots without requires (before stamps) restore too.
	if err := restore(f, `{"name":"old","nodes":{},"next_num":1}`); err != nil || f.ClusterName() != "old" {
		t.Errorf("legacy snapshot: %v", err)
	}
}

func TestRequiresOnlyRises(t *testing.T) {
	c := emptyCluster()
	raiseRequires(c, version.V{Minor: 2})
	raiseRequires(c, version.V{Minor: 1, Patch: 9})
	if c.Requires != "0.2.0" {
		t.Errorf("requires %q, want 0.2.0", c.Requires)
	}
	v := version.V{Minor: 4}
	if got := requiredBy(Entry{Type: CmdSetState, Needs: v}, v0_1_0); got != v {
		t.Errorf("a SetState stamped %v requires %v", v, got)
	}
	if got := requiredBy(Entry{Type: CmdSetState}, v0_1_0); got != v0_1_0 {
		t.Errorf("a legacy SetState requires %v, want %v", got, v0_1_0)
	}
	if got := requiredBy(Entry{Type: IgnoreUnknown | 0x42, Needs: v}, v); !got.IsZero() {
		t.Errorf("a skippable command requires %v, want nothing: older versions may drop it", got)
	}
	a := newApplier(t)
	a.apply(CmdRemoveNode, RemoveNode{Num: 9}) // refused
	a.raw(Entry{Type: IgnoreUnknown | 0x42, Needs: vFuture, Body: futureBody}.Bytes())
	if got := a.f.Cluster().Requires; got != "0.1.0" {
		t.Errorf("requires %q after refused and skipped entries, want 0.1.0", got)
	}
}

// FuzzDecodeEntry: DecodeEntry never panics, and what it decodes
// re-encodes to an entry that decodes the same.
func FuzzDecodeEntry(f *testing.F) {
	for _, seed := range [][]byte{
		mustEncode(CmdSetState, SetState{Num: 1, To: Up}), legacy(CmdAddNodes, AddNodes{}), futureCmd,
		{3, 0x00, 9, 0, 0, 0, 1, 0, 0, 1, 2, 3, '{', '}'}, {3, 0x00, 255}, {3, 0x00}, {3, 0x1f}, {3, '\t', '{'}, {3}, {},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEntry(data)
		_ = CheckEntry(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedEntry) && !errors.Is(err, ErrFutureEntryFormat) {
				t.Fatalf("%q: unclassified error %v", data, err)
			}
			return
		}
		if len(e.Body) > len(data) || e.Type != CommandType(data[0]) {
			t.Fatalf("%q decoded to %+v", data, e)
		}
		again, err := DecodeEntry(e.Bytes())
		if err != nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("%q: decoded %+v, re-encoded %q, decoded again %+v, %v", data, e, e.Bytes(), again, err)
		}
	})
}
