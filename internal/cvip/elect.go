package cvip

import (
	"context"
	"time"

	"github.com/ssi-cluster/ssi/internal/state"
)

// nextDirector decides who should direct v in c: its director while that
// node is UP and may direct, else the first UP node of its directors (all
// nodes in number order when it names none), 0 when no node can. ok is
// false when nothing needs to change.
func nextDirector(c *state.Cluster, v *state.VIP) (num uint32, ok bool) {
	if cur := c.Nodes[v.Director]; cur != nil && cur.State == state.Up && v.MayDirect(cur.Num) {
		return 0, false
	}
	cands := v.Directors
	if len(cands) == 0 {
		cands = nil
		for _, n := range c.SortedNodes() {
			cands = append(cands, n.Num)
		}
	}
	for _, num := range cands {
		if n := c.Nodes[num]; n != nil && n.State == state.Up {
			return num, num != v.Director
		}
	}
	return 0, v.Director != 0
}

// elect is the leader duty: while this node leads, every VIP has an UP
// director, and a new one as soon as the state says its director is no
// longer UP (membership marks it DOWN after the failure timeout).
func (s *Service) elect(ctx context.Context, _ uint32) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		changed := s.cfg.FSM.Changed()
		c := s.cfg.FSM.Cluster()
		done := map[string]bool{} // addresses moved in this pass (one SetDirector moves them all)
		for _, v := range c.SortedVIPs() {
			num, ok := nextDirector(c, v)
			if !ok || done[v.Addr] {
				continue
			}
			done[v.Addr] = true
			cmd := state.SetDirector{Key: v.Key(), Node: num, From: v.Director, Time: time.Now()}
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := s.cfg.Leader.Apply(actx, state.CmdSetDirector, cmd)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("cvip: electing a director", "vip", v.Key(), "node", num, "from", v.Director, "err", err)
				continue
			}
			s.log.Info("cvip: director elected", "vip", v.Key(), "node", num, "was", v.Director)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}
