package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/version"
)

// FSM is the Raft state machine holding the Cluster. Reads return copies
// and may run concurrently with Apply.
//
// A committed entry this version cannot apply (an unknown command type
// without the IgnoreUnknown bit, or an entry stamped with a newer version)
// halts the FSM: it applies nothing from that entry on, refuses to snapshot
// (so that Raft keeps the log from which an upgraded node replays it) and
// closes Halted. The daemon must then exit; see docs/UPGRADES.md.
type FSM struct {
	mu      sync.RWMutex
	c       *Cluster
	applied uint64
	changed chan struct{}
	log     *slog.Logger
	halted  chan struct{} // closed by halt
	haltErr *HaltError    // set by halt, under mu
}

// NewFSM returns an empty state machine.
func NewFSM(log *slog.Logger) *FSM {
	if log == nil {
		log = slog.Default()
	}
	return &FSM{c: emptyCluster(), changed: make(chan struct{}), log: log, halted: make(chan struct{})}
}

// Halted returns a channel that is closed when the FSM halts: a committed
// entry or a snapshot needs a newer ssi. HaltErr says which. It never
// reopens; the process must exit.
func (f *FSM) Halted() <-chan struct{} { return f.halted }

// HaltErr is the *HaltError the FSM halted with, nil while it runs. Its
// message names the log index, the command type, this node's version and
// the version to upgrade to.
func (f *FSM) HaltErr() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.haltErr == nil {
		return nil
	}
	return f.haltErr
}

// halt stops the FSM for good, under f.mu.
func (f *FSM) halt(h *HaltError) {
	f.haltErr = h
	f.log.Error("state machine halted: this node is too old for the cluster's log; it applies nothing more and must be upgraded",
		"index", h.Index, "type", int(h.Type), "node_version", h.Node.String(), "needs_version", versionAttr(h.Needs), "err", h)
	close(f.halted)
	// Wake whoever waits for a change, so they can notice the halt.
	close(f.changed)
	f.changed = make(chan struct{})
}

// versionAttr is a version for the log, "unknown" when zero.
func versionAttr(v version.V) string {
	if v.IsZero() {
		return "unknown"
	}
	return v.String()
}

// haltedResult is the answer to every entry from the halt on.
func (f *FSM) haltedResult() Result {
	return Result{Err: &Error{Code: CodeHalted, Msg: f.haltErr.Error()}}
}

func emptyCluster() *Cluster {
	return &Cluster{Nodes: map[uint32]*Node{}, NextNum: 1}
}

// Cluster returns a copy of the current state.
func (f *FSM) Cluster() *Cluster {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.c.Clone()
}

// CFSRecord is the cluster filesystem's record (Cluster.CFSRecord), without
// copying the whole state: it is read on every metrics scrape and by the
// replica's checks.
func (f *FSM) CFSRecord(def uint32) CFS {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.c.CFSRecord(def)
}

// AppliedIndex is the log index of the last applied entry.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Changed returns a channel that is closed by the next applied change, and
// once when the FSM halts (waiters should also watch Halted).
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return Result{}
	}
	return f.ApplyEntry(l.Index, l.Data)
}

// ApplyEntry applies one encoded command at the given log index.
func (f *FSM) ApplyEntry(index uint64, data []byte) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.haltErr != nil {
		return f.haltedResult()
	}
	res, h := f.applyLocked(index, data)
	if h != nil {
		f.halt(h)
		return f.haltedResult()
	}
	if index > f.applied {
		f.applied = index
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return res
}

// applyLocked applies an entry to f.c, or says why the FSM must halt.
func (f *FSM) applyLocked(index uint64, data []byte) (Result, *HaltError) {
	e, err := DecodeEntry(data)
	if h := check(index, e, err); h != nil {
		return Result{}, h
	}
	if errors.Is(err, ErrMalformedEntry) {
		// Every version refuses it the same way.
		return Result{Err: Errorf(CodeInvalid, "%v", err)}, nil
	}
	since, known := Introduced(e.Type)
	if err != nil || !known || version.Current.Less(e.Needs) {
		// check let it through: it is skippable.
		f.log.Warn("skipping a log entry this version does not know; its command type is marked skippable (IgnoreUnknown)",
			"type", int(e.Type), "index", index, "needs_version", versionAttr(e.Needs), "node_version", version.Current.String())
		return Result{}, nil
	}
	id := requestID(e.Body)
	if id != "" {
		if r, seen := f.c.Outcome(id); seen {
			return r, nil // a retry: the first copy's outcome, applied once
		}
	}
	// Work on a copy so that a refused command changes nothing.
	next := f.c.Clone()
	val, err := apply(next, e.Type, e.Body, index)
	if err != nil {
		if se, ok := err.(*Error); ok {
			if id != "" {
				// The refusal is the outcome too: only the record changes.
				keep := f.c.Clone()
				keep.remember(id, Result{Err: se})
				f.c = keep
			}
			return Result{Err: se}, nil
		}
		// apply knows fewer types than the version table: a bug that
		// must not make this node diverge either.
		return Result{}, &HaltError{Index: index, Type: e.Type, Node: version.Current, Needs: since, Detail: err.Error()}
	}
	raiseRequires(next, requiredBy(e, since))
	var raw json.RawMessage
	if val != nil {
		raw, _ = json.Marshal(val)
	}
	if id != "" {
		next.remember(id, Result{Value: raw})
	}
	f.c = next
	return Result{Value: raw}, nil
}

// requiredBy is the version a state needs once entry e (of a type
// introduced in since) is applied to it. A skippable command's effects
// can be dropped by older versions (docs/UPGRADES.md), so it needs none.
func requiredBy(e Entry, since version.V) version.V {
	if e.Type.Skippable() {
		return version.V{}
	}
	return version.Max(since, e.Needs)
}

// raiseRequires records in c that its state needs ssi >= v.
func raiseRequires(c *Cluster, v version.V) {
	// Restore checked that Requires parses; "" is the zero version.
	if have, _ := c.requires(); have.Less(v) {
		c.Requires = v.String()
	}
}

func apply(c *Cluster, t CommandType, body []byte, index uint64) (any, error) {
	decode := func(v any) error {
		if err := json.Unmarshal(body, v); err != nil {
			return Errorf(CodeInvalid, "malformed command %d: %v", t, err)
		}
		return nil
	}
	switch t {
	case CmdBootstrap:
		var cmd Bootstrap
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applyBootstrap(c, cmd, index)
	case CmdAddNodes:
		var cmd AddNodes
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return applyAddNodes(c, cmd)
	case CmdSetState:
		var cmd SetState
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetState(c, cmd, index)
	case CmdSetToken:
		var cmd SetToken
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		n, ok := c.Nodes[cmd.Num]
		if !ok {
			return nil, Errorf(CodeNotFound, "node %d is not in the node table", cmd.Num)
		}
		n.TokenHash, n.TokenExpires = cmd.Hash, cmd.Expires
		return nil, nil
	case CmdJoin:
		var cmd Join
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return applyJoin(c, cmd, index)
	case CmdRemoveNode:
		var cmd RemoveNode
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		n, ok := c.Nodes[cmd.Num]
		if !ok {
			return nil, Errorf(CodeNotFound, "node %d is not in the node table", cmd.Num)
		}
		if n.State != NeverUp && n.State != Down {
			return nil, Errorf(CodeConflict, "node %d is %s; shut it down first (clusternode_shutdown %d)", cmd.Num, n.State, cmd.Num)
		}
		if vip := vipUsing(c, cmd.Num); vip != "" {
			return nil, Errorf(CodeConflict, "node %d is a backend or director of the cluster virtual IP %s; remove the VIP first (ssi cvip rm %s)", cmd.Num, vip, vip)
		}
		if n.InitNode && len(c.Nodes) > 1 {
			return nil, Errorf(CodeConflict, "node %d created the cluster and is its init node; it cannot be removed while other nodes exist", cmd.Num)
		}
		delete(c.Nodes, cmd.Num)
		return nil, nil
	case CmdReplaceVoter:
		var cmd ReplaceVoter
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		down, up := c.Nodes[cmd.Down], c.Nodes[cmd.Up]
		switch {
		case down == nil || up == nil:
			return nil, Errorf(CodeNotFound, "node %d or %d is not in the node table", cmd.Down, cmd.Up)
		case !down.Voter || down.State != Down:
			return nil, Errorf(CodeConflict, "node %d is not a DOWN voter", cmd.Down)
		case up.Voter || up.State != Up:
			return nil, Errorf(CodeConflict, "node %d is not an UP non-voter", cmd.Up)
		}
		down.Voter, up.Voter = false, true
		c.Events = append(c.Events, Event{Time: cmd.Time, Num: cmd.Up, From: up.State, To: up.State, Reason: cmd.Reason, Index: index})
		if len(c.Events) > MaxEvents {
			c.Events = append([]Event(nil), c.Events[len(c.Events)-MaxEvents:]...)
		}
		return nil, nil
	case CmdClusterShutdown:
		var cmd ClusterShutdown
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		for _, num := range sortedNums(c) {
			if n := c.Nodes[num]; n.State != NeverUp && n.State != Down {
				transition(c, n, Down, cmd.Reason, cmd.Time, index)
			}
		}
		return nil, nil
	case CmdSetDHCP:
		var cmd SetDHCP
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return applySetDHCP(c, cmd)
	case CmdRecordLease:
		var cmd RecordLease
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applyRecordLease(c, cmd)
	case CmdSetLocation:
		var cmd SetLocation
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetLocation(c, cmd)
	case CmdSetLoadLevel:
		var cmd SetLoadLevel
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetLoadLevel(c, cmd)
	case CmdMoved:
		var cmd Moved
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applyMoved(c, cmd, index)
	case CmdSetBlocked:
		var cmd SetBlocked
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetBlocked(c, cmd)
	case CmdSetCFS:
		var cmd SetCFS
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetCFS(c, cmd)
	case CmdSetJobRoot:
		var cmd SetJobRoot
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		c.JobRoot = cmd.On
		return nil, nil
	case CmdAddVIP:
		var cmd AddVIP
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return applyAddVIP(c, cmd)
	case CmdRemoveVIP:
		var cmd RemoveVIP
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applyRemoveVIP(c, cmd)
	case CmdSetVIP:
		var cmd SetVIP
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return applySetVIP(c, cmd)
	case CmdSetDirector:
		var cmd SetDirector
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetDirector(c, cmd)
	case CmdSetNetPool, CmdAssignNetAddr, CmdReleaseNetAddr:
		return applyJobNet(c, t, decode)
	default:
		return nil, fmt.Errorf("command type %d is in the version table but this version cannot apply it (a bug: add it to state.apply)", byte(t))
	}
}

func applyBootstrap(c *Cluster, cmd Bootstrap, index uint64) error {
	if c.Name != "" {
		return Errorf(CodeExists, "the cluster %q already exists", c.Name)
	}
	if err := ValidClusterName(cmd.Name); err != nil {
		return err
	}
	if err := cmd.Config.Validate(); err != nil {
		return err
	}
	c.Name, c.CAFingerprint, c.Config = cmd.Name, cmd.CAFingerprint, cmd.Config
	if c.Config.NamePrefix == "" {
		c.Config.NamePrefix = DefaultNamePrefix(cmd.Name)
	}
	spec := cmd.Node
	spec.Num = 1
	if _, err := applyAddNodes(c, AddNodes{Nodes: []NodeSpec{spec}, Time: cmd.Time}); err != nil {
		return err
	}
	n := c.Nodes[1]
	n.InitNode, n.Voter = true, true
	transition(c, n, ComingUp, "cluster created", cmd.Time, index)
	return nil
}

func applyAddNodes(c *Cluster, cmd AddNodes) ([]*Node, error) {
	if c.Name == "" && !(len(cmd.Nodes) == 1 && cmd.Nodes[0].Num == 1) {
		return nil, Errorf(CodeConflict, "the cluster has not been created yet")
	}
	if len(cmd.Nodes) == 0 {
		return nil, Errorf(CodeInvalid, "no nodes to add")
	}
	byMAC, byIP, byName := map[string]uint32{}, map[string]uint32{}, map[string]uint32{}
	for _, n := range c.Nodes {
		byMAC[n.HWAddr], byIP[n.IPAddr], byName[strings.ToLower(n.Name)] = n.Num, n.Num, n.Num
	}
	next := c.NextNum
	var added []*Node
	for i, s := range cmd.Nodes {
		where := ""
		if len(cmd.Nodes) > 1 {
			where = fmt.Sprintf(" (entry %d)", i+1)
		}
		mac, err := nodeaddr.ParseMAC(s.HWAddr)
		if err != nil {
			return nil, Errorf(CodeInvalid, "%v%s", err, where)
		}
		ip, err := nodeaddr.ParseIP(s.IPAddr)
		if err != nil {
			return nil, Errorf(CodeInvalid, "%v%s", err, where)
		}
		num := s.Num
		if num == 0 {
			for c.Nodes[next] != nil || numTaken(added, next) {
				next++
			}
			num = next
			next++
		} else if c.Nodes[num] != nil || numTaken(added, num) {
			return nil, Errorf(CodeExists, "node number %d is already in use%s", num, where)
		}
		if int(num) > c.Config.MaxNodes && c.Name != "" {
			return nil, Errorf(CodeFull, "the cluster is full: node number %d is above the maximum of %d nodes%s", num, c.Config.MaxNodes, where)
		}
		name := s.Name
		if name == "" {
			name = fmt.Sprintf("%s%d", c.Config.NamePrefix, num)
		}
		if err := ValidNodeName(name); err != nil {
			return nil, Errorf(CodeInvalid, "%v%s", err, where)
		}
		if other, dup := byMAC[mac]; dup {
			return nil, Errorf(CodeExists, "MAC address %s is already registered as node %d%s", mac, other, where)
		}
		if other, dup := byIP[ip.String()]; dup {
			return nil, Errorf(CodeExists, "IP address %s is already registered as node %d%s", ip, other, where)
		}
		if vip := vipAt(c, ip.String()); vip != "" {
			return nil, Errorf(CodeExists, "IP address %s is the cluster virtual IP %s%s", ip, vip, where)
		}
		if other, dup := byName[strings.ToLower(name)]; dup {
			return nil, Errorf(CodeExists, "node name %q is already used by node %d%s", name, other, where)
		}
		byMAC[mac], byIP[ip.String()], byName[strings.ToLower(name)] = num, num, num
		added = append(added, &Node{
			Num: num, Name: name, HWAddr: mac, IPAddr: ip.String(), State: NeverUp,
			StateSince: cmd.Time, Xen: s.Xen, TokenHash: s.TokenHash, TokenExpires: s.TokenExpires,
		})
	}
	for _, n := range added {
		c.Nodes[n.Num] = n
		if n.Num >= c.NextNum {
			c.NextNum = n.Num + 1
		}
	}
	out := make([]*Node, len(added))
	for i, n := range added {
		cp := *n
		cp.TokenHash = ""
		out[i] = &cp
	}
	return out, nil
}

func numTaken(ns []*Node, num uint32) bool {
	for _, n := range ns {
		if n.Num == num {
			return true
		}
	}
	return false
}

func applySetState(c *Cluster, cmd SetState, index uint64) error {
	n, ok := c.Nodes[cmd.Num]
	if !ok {
		return Errorf(CodeNotFound, "node %d is not in the node table", cmd.Num)
	}
	if !ValidState(cmd.To) {
		return Errorf(CodeInvalid, "unknown state %q", cmd.To)
	}
	if len(cmd.From) > 0 {
		allowed := false
		for _, s := range cmd.From {
			allowed = allowed || s == n.State
		}
		if !allowed {
			return Errorf(CodeConflict, "node %d is %s, not %v", cmd.Num, n.State, cmd.From)
		}
	}
	if cmd.BootID != "" {
		n.BootID = cmd.BootID
	}
	if n.State != cmd.To {
		transition(c, n, cmd.To, cmd.Reason, cmd.Time, index)
	}
	return nil
}

func applyJoin(c *Cluster, cmd Join, index uint64) (*JoinResult, error) {
	mac, err := nodeaddr.ParseMAC(cmd.HWAddr)
	if err != nil {
		return nil, Errorf(CodeInvalid, "%v", err)
	}
	n := c.NodeByMAC(mac)
	if n == nil {
		return nil, Errorf(CodeNotFound, "no node with MAC %s is registered; register it first with ssi-addnode --hwaddr=%s --ipaddr=...", mac, mac)
	}
	if n.TokenHash == "" || n.TokenHash != cmd.TokenHash {
		return nil, Errorf(CodeDenied, "the join token is not valid for node %d (%s); issue a new one with 'ssi token %d'", n.Num, mac, n.Num)
	}
	if !cmd.Time.Before(n.TokenExpires) {
		return nil, Errorf(CodeDenied, "the join token of node %d expired at %s; issue a new one with 'ssi token %d'", n.Num, n.TokenExpires.UTC().Format(time.RFC3339), n.Num)
	}
	if n.State.Live() {
		return nil, Errorf(CodeConflict, "node %d is %s; a running node cannot join again", n.Num, n.State)
	}
	if !n.Voter {
		voters := 0
		for _, o := range c.Nodes {
			if o.Voter {
				voters++
			}
		}
		n.Voter = voters < c.Config.Voters
	}
	n.TokenHash, n.TokenExpires = "", time.Time{}
	transition(c, n, ComingUp, "joined", cmd.Time, index)
	return &JoinResult{Num: n.Num, Voter: n.Voter}, nil
}

func transition(c *Cluster, n *Node, to NodeState, reason string, at time.Time, index uint64) {
	c.Events = append(c.Events, Event{Time: at, Num: n.Num, From: n.State, To: to, Reason: reason, Index: index})
	if len(c.Events) > MaxEvents {
		c.Events = append([]Event(nil), c.Events[len(c.Events)-MaxEvents:]...)
	}
	n.State, n.StateSince, n.StateIndex = to, at, index
}

func sortedNums(c *Cluster) []uint32 {
	nums := make([]uint32, 0, len(c.Nodes))
	for k := range c.Nodes {
		nums = append(nums, k)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	return nums
}

// SortedNodes returns the nodes ordered by number.
func (c *Cluster) SortedNodes() []*Node {
	out := make([]*Node, 0, len(c.Nodes))
	for _, k := range sortedNums(c) {
		out = append(out, c.Nodes[k])
	}
	return out
}

// nameOK says whether s is 1 to max characters, each a letter, a digit or
// one of inner, with no character of inner first or last. (Not a regexp:
// compiling one with {0,61} at package init cost every CLI command
// ~0.1 ms of its start.)
func nameOK(s string, max int, inner string) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte(inner, c) >= 0 && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// ValidNodeName checks a node name (a host name label).
func ValidNodeName(s string) error {
	if !nameOK(s, 63, "-") {
		return Errorf(CodeInvalid, "node name %q is not a valid host name (letters, digits and '-', at most 63, not starting or ending with '-')", s)
	}
	return nil
}

// ValidClusterName checks a cluster name.
func ValidClusterName(s string) error {
	if !nameOK(s, 63, "_.-") {
		return Errorf(CodeInvalid, "cluster name %q is not valid (letters, digits, '.', '_' and '-', at most 63)", s)
	}
	return nil
}

// DefaultNamePrefix derives node-name prefixes from the cluster name: the
// name without trailing digits ("ssi1" gives ssi1's nodes ssi2, ssi3, ...).
func DefaultNamePrefix(cluster string) string {
	p := strings.TrimRight(cluster, "0123456789")
	p = strings.Map(func(r rune) rune {
		if r == '_' || r == '.' {
			return '-'
		}
		return r
	}, p)
	p = strings.TrimRight(p, "-")
	if p == "" || ValidNodeName(p+"1") != nil {
		return "node"
	}
	return p
}

// Snapshot implements raft.FSM. A halted FSM refuses: a snapshot would
// claim the entries it did not apply, and Raft would drop them from the log
// that an upgraded node must replay.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.haltErr != nil {
		return nil, fmt.Errorf("snapshot cluster state: %w", f.haltErr)
	}
	c := *f.c // shallow: only SnapshotApplied differs
	c.SnapshotApplied = f.applied
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("snapshot cluster state: %w", err)
	}
	return snapshot(b), nil
}

// Restore implements raft.FSM. A snapshot whose state needs a newer ssi
// (Cluster.Requires) halts the FSM and is refused, as is any snapshot once
// it has halted. JSON fields this version does not know are ignored:
// docs/UPGRADES.md says why that is safe.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	c := emptyCluster()
	if err := json.NewDecoder(rc).Decode(c); err != nil {
		return fmt.Errorf("restore cluster state from snapshot: %w", err)
	}
	if c.Nodes == nil {
		c.Nodes = map[uint32]*Node{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.haltErr != nil {
		return fmt.Errorf("restore cluster state from snapshot: %w", f.haltErr)
	}
	needs, err := c.requires()
	if err != nil || version.Current.Less(needs) {
		h := &HaltError{Snapshot: true, Node: version.Current, Needs: needs,
			Detail: fmt.Sprintf("its state holds the effects of commands of ssi %s, which this version does not know", c.Requires)}
		if err != nil {
			h.Detail = fmt.Sprintf("its version requirement is in a format this version cannot read: %v", err)
		}
		f.halt(h)
		return fmt.Errorf("restore cluster state from snapshot: %w", h)
	}
	if c.SnapshotApplied > 0 {
		f.applied = c.SnapshotApplied
	}
	c.SnapshotApplied = 0
	f.c = c
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s snapshot) Release() {}

// Config returns the cluster configuration (zero before bootstrap).
func (f *FSM) Config() Config {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.c.Config
}

// ClusterName returns the cluster's name ("" before bootstrap).
func (f *FSM) ClusterName() string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.c.Name
}
