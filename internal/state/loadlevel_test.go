package state

import "testing"

// The cluster's setting applies to every node without one of its own; a
// node's own setting wins until cleared; an unknown node is refused.
func TestSetLoadLevel(t *testing.T) {
	c := &Cluster{Nodes: map[uint32]*Node{1: {Num: 1}, 2: {Num: 2}}}
	if c.Levels(1) || c.Levels(2) {
		t.Fatal("leveling is on by default")
	}
	steps := []struct {
		cmd    SetLoadLevel
		ok     bool
		n1, n2 bool
	}{
		{SetLoadLevel{On: true}, true, true, true},
		{SetLoadLevel{Node: 2, On: false}, true, true, false},
		{SetLoadLevel{On: false}, true, false, false},
		{SetLoadLevel{On: true}, true, true, false},
		{SetLoadLevel{Node: 2, Clear: true}, true, true, true},
		{SetLoadLevel{Node: 9, On: true}, false, true, true},
		{SetLoadLevel{Clear: true}, false, true, true},
	}
	for i, s := range steps {
		err := applySetLoadLevel(c, s.cmd)
		if (err == nil) != s.ok {
			t.Errorf("step %d %+v: %v", i, s.cmd, err)
		}
		if c.Levels(1) != s.n1 || c.Levels(2) != s.n2 {
			t.Errorf("step %d %+v: node 1 %v, node 2 %v; want %v, %v", i, s.cmd, c.Levels(1), c.Levels(2), s.n1, s.n2)
		}
	}
	cp := c.Clone()
	_ = applySetLoadLevel(cp, SetLoadLevel{Node: 1, On: false})
	if !c.Levels(1) {
		t.Error("Clone shares the per-node settings")
	}
}

func TestSetBlocked(t *testing.T) {
	c := &Cluster{Nodes: map[uint32]*Node{1: {Num: 1}, 2: {Num: 2}}}
	if err := applySetBlocked(c, SetBlocked{Node: 2, Blocked: true}); err != nil || !c.IsBlocked(2) || c.IsBlocked(1) {
		t.Fatalf("block 2: %v, blocked %v", err, c.Blocked)
	}
	cp := c.Clone()
	if err := applySetBlocked(c, SetBlocked{Node: 2}); err != nil || c.IsBlocked(2) {
		t.Errorf("unblock 2: %v, blocked %v", err, c.Blocked)
	}
	if !cp.IsBlocked(2) {
		t.Error("Clone shares the blocked set")
	}
	if err := applySetBlocked(c, SetBlocked{Node: 7, Blocked: true}); err == nil {
		t.Error("blocked an unknown node")
	}
}
