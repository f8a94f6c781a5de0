package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Load leveling (loadlevel): while it leads, a node looks at the loads in
// the heartbeats and asks the busiest node whose leveling is on to push its
// best candidate to the least-loaded node, when the gap is worth it.

const (
	// levelInterval is how often the leader looks at the loads.
	levelInterval = 2 * time.Second
	// levelGap is how much busier, in runnable processes, the busiest
	// node must be than the least-loaded one: more than one process's
	// worth, so that a move always narrows the gap and no job bounces
	// back (MOSIX counts a remote node as its load plus more than one
	// process). Loads are per CPU: the gap is levelGap/NCPU of the busy
	// node.
	levelGap = 1.5
	// levelSettle is how long the loads are left to settle after a move
	// (they are averaged over a few seconds).
	levelSettle = 6 * time.Second
	// levelMinAge: a job must have run this long to be moved.
	levelMinAge = 3 * time.Second
	// levelRest: a job that was moved stays put this long.
	levelRest = 30 * time.Second
)

// Loads gives the loads the leveler reads (internal/placement).
type Loads interface {
	Current(ctx context.Context) (*ssiv1.LoadsResponse, error)
}

// leveler is the leader's duty; it runs while this node leads.
func (m *Migrator) leveler(ctx context.Context, _ uint32) {
	t := time.NewTicker(levelInterval)
	defer t.Stop()
	var settled time.Time
	resting := map[int64]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Now().Before(settled) {
			continue
		}
		for c, until := range resting {
			if time.Now().After(until) {
				delete(resting, c)
			}
		}
		from, to, ok := m.levelPair(ctx)
		if !ok {
			continue
		}
		req := &ssiv1.LevelRequest{To: to}
		for c := range resting {
			req.Resting = append(req.Resting, c)
		}
		resp, err := m.askLevel(ctx, from, req)
		if err != nil {
			m.log.Debug("leveling", "from", from, "to", to, "err", err)
			settled = time.Now().Add(levelSettle)
			continue
		}
		if resp.Cpid != 0 {
			m.log.Info("load leveling moved a job", "cpid", resp.Cpid, "from", from, "to", to)
			resting[resp.Cpid] = time.Now().Add(levelRest)
			settled = time.Now().Add(levelSettle)
		}
	}
}

// levelPair is the busiest node that levels and the least-loaded other
// one, if the gap between them is worth a move.
func (m *Migrator) levelPair(ctx context.Context) (from, to uint32, ok bool) {
	cl := m.cfg.FSM.Cluster()
	someOn := false
	for num := range cl.Nodes {
		if cl.Levels(num) {
			someOn = true
		}
	}
	if !someOn || m.cfg.Loads == nil {
		return 0, 0, false
	}
	resp, err := m.cfg.Loads.Current(ctx)
	if err != nil {
		return 0, 0, false
	}
	var up []*ssiv1.NodeLoad
	for _, l := range resp.Loads {
		if n, ok := cl.Nodes[l.Num]; ok && n.State == state.Up && l.Ncpu > 0 {
			up = append(up, l)
		}
	}
	if len(up) < 2 {
		return 0, 0, false
	}
	byLoad := func(ls []*ssiv1.NodeLoad) {
		sort.Slice(ls, func(i, j int) bool {
			return ls[i].Load > ls[j].Load || ls[i].Load == ls[j].Load && ls[i].Num < ls[j].Num
		})
	}
	byLoad(up)
	// A blocked node gives jobs away but takes none.
	var takers []*ssiv1.NodeLoad
	for _, l := range up {
		if !cl.IsBlocked(l.Num) {
			takers = append(takers, l)
		}
	}
	if len(takers) == 0 {
		return 0, 0, false
	}
	least := takers[len(takers)-1]
	for _, b := range up {
		if b.Num == least.Num || !cl.Levels(b.Num) {
			continue
		}
		if b.Load-least.Load > levelGap/float64(b.Ncpu) {
			return b.Num, least.Num, true
		}
		break // the busiest leveling node is not busy enough
	}
	return 0, 0, false
}

func (m *Migrator) askLevel(ctx context.Context, from uint32, req *ssiv1.LevelRequest) (*ssiv1.LevelResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if from == m.cfg.Self {
		r, err := m.Service().Level(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	}
	cl, err := m.clients.To(from)
	if err != nil {
		return nil, err
	}
	r, err := cl.Level(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return r.Msg, nil
}

// Level moves this node's best candidate to req.To: the movable job using
// the most CPU that has run long enough and is not resting.
func (s *Service) Level(ctx context.Context, req *connect.Request[ssiv1.LevelRequest]) (*connect.Response[ssiv1.LevelResponse], error) {
	m := s.m
	cl := m.cfg.FSM.Cluster()
	if !cl.Levels(m.cfg.Self) {
		return connect.NewResponse(&ssiv1.LevelResponse{Reason: "leveling is off here"}), nil
	}
	to, ok := cl.Nodes[req.Msg.To]
	if !ok || to.State != state.Up || to.Num == m.cfg.Self {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d cannot take a job", req.Msg.To))
	}
	criuPath, err := m.criu()
	if err != nil {
		return nil, err
	}
	resting := map[int64]bool{}
	for _, c := range req.Msg.Resting {
		resting[c] = true
	}
	var best *procs.Job
	bestCPU := -1.0
	for _, cpid := range m.cfg.Jobs.Running() {
		if resting[int64(cpid)] || m.arrivedLately(cpid) {
			continue
		}
		j, err := m.cfg.Jobs.Movable(cpid, procs.Caller{UID: 0})
		if err != nil || time.Since(j.Started) < levelMinAge || len(j.Nodes) > 0 && !slices.Contains(j.Nodes, to.Num) {
			continue
		}
		cpu := 0.0
		for _, p := range m.cfg.Jobs.List(procs.Filter{CPID: cpid}) {
			cpu += p.CPU
		}
		if cpu > bestCPU {
			best, bestCPU = j, cpu
		}
	}
	if best == nil {
		return connect.NewResponse(&ssiv1.LevelResponse{Reason: "no job here can move"}), nil
	}
	if _, err := m.move(ctx, best, to, criuPath, "load leveling", nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&ssiv1.LevelResponse{Cpid: int64(best.CPID)}), nil
}

// arrivals remembers when jobs moved here, so that the leveler leaves
// them be for a while.
type arrivals struct {
	mu   sync.Mutex
	when map[vproc.CPID]time.Time
}

func (m *Migrator) arrived(cpid vproc.CPID) {
	m.arr.mu.Lock()
	defer m.arr.mu.Unlock()
	if m.arr.when == nil {
		m.arr.when = map[vproc.CPID]time.Time{}
	}
	for c, t := range m.arr.when {
		if time.Since(t) > levelRest {
			delete(m.arr.when, c)
		}
	}
	m.arr.when[cpid] = time.Now()
}

func (m *Migrator) arrivedLately(cpid vproc.CPID) bool {
	m.arr.mu.Lock()
	defer m.arr.mu.Unlock()
	t, ok := m.arr.when[cpid]
	return ok && time.Since(t) < levelRest
}

// LoadLevel shows or sets load leveling (loadlevel).
func (c *Control) LoadLevel(ctx context.Context, req *connect.Request[ssiv1.LoadLevelRequest]) (*connect.Response[ssiv1.LoadLevelResponse], error) {
	m := c.m
	q := req.Msg
	if q.Set {
		uid, err := callerUID(ctx)
		if err != nil {
			return nil, err
		}
		if uid != 0 {
			return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only root may turn load leveling on or off"))
		}
		if _, err := m.cfg.Leader.Apply(ctx, state.CmdSetLoadLevel, state.SetLoadLevel{Node: q.Node, On: q.On, Clear: q.Clear}); err != nil {
			return nil, m.fail(err)
		}
	}
	if !q.Set {
		// A read: never older than a change acknowledged before it.
		if err := m.cfg.Leader.ReadBarrier(ctx); err != nil {
			return nil, m.fail(err)
		}
	}
	ll := m.cfg.FSM.Cluster().LoadLevel
	if q.Set {
		// This node's copy of the state may not have the change yet.
		_ = applySetLoadLevelView(&ll, q)
	}
	return connect.NewResponse(&ssiv1.LoadLevelResponse{All: ll.All, Nodes: ll.Nodes}), nil
}

// applySetLoadLevelView applies a change to a copy of the setting.
func applySetLoadLevelView(ll *state.LoadLevel, q *ssiv1.LoadLevelRequest) error {
	c := &state.Cluster{LoadLevel: *ll, Nodes: map[uint32]*state.Node{q.Node: {Num: q.Node}}}
	c.LoadLevel.Nodes = map[uint32]bool{}
	for k, v := range ll.Nodes {
		c.LoadLevel.Nodes[k] = v
	}
	return state.ApplyLoadLevel(c, state.SetLoadLevel{Node: q.Node, On: q.On, Clear: q.Clear}, func(l state.LoadLevel) { *ll = l })
}

// BlockNode blocks or unblocks a node (ssi node block|unblock): a blocked
// node takes no new jobs (placement, onnode, migration), it may still send
// its jobs away.
func (c *Control) BlockNode(ctx context.Context, req *connect.Request[ssiv1.BlockNodeRequest]) (*connect.Response[ssiv1.BlockNodeResponse], error) {
	m := c.m
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, err
	}
	if uid != 0 {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only root may block or unblock a node"))
	}
	q := req.Msg
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdSetBlocked, state.SetBlocked{Node: q.Node, Blocked: q.Blocked}); err != nil {
		return nil, m.fail(err)
	}
	blocked := map[uint32]bool{}
	for n := range m.cfg.FSM.Cluster().Blocked {
		blocked[n] = true
	}
	// This node's copy of the state may not have the change yet.
	if q.Blocked {
		blocked[q.Node] = true
	} else {
		delete(blocked, q.Node)
	}
	out := &ssiv1.BlockNodeResponse{}
	for n := range blocked {
		out.Blocked = append(out.Blocked, n)
	}
	sort.Slice(out.Blocked, func(i, j int) bool { return out.Blocked[i] < out.Blocked[j] })
	return connect.NewResponse(out), nil
}
