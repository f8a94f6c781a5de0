package state

// CmdSetLoadLevel turns load leveling on or off, for the cluster or one
// node (loadlevel -a on|off, loadlevel -n N on|off).
const CmdSetLoadLevel CommandType = 12

// SetLoadLevel sets leveling for every node (Node 0) or for node Node,
// which then keeps its own setting whatever the cluster's; Clear drops a
// node's own setting.
type SetLoadLevel struct {
	Node  uint32 `json:"node,omitempty"`
	On    bool   `json:"on"`
	Clear bool   `json:"clear,omitempty"`
}

// LoadLevel is whether the leveler moves jobs away from busy nodes: for
// the cluster, and the nodes that have a setting of their own.
type LoadLevel struct {
	All   bool            `json:"all"`
	Nodes map[uint32]bool `json:"nodes,omitempty"`
}

// Levels reports whether the leveler may move jobs off node num.
func (c *Cluster) Levels(num uint32) bool {
	if v, ok := c.LoadLevel.Nodes[num]; ok {
		return v
	}
	return c.LoadLevel.All
}

func applySetLoadLevel(c *Cluster, cmd SetLoadLevel) error {
	if cmd.Node == 0 {
		if cmd.Clear {
			return Errorf(CodeInvalid, "clear needs a node")
		}
		c.LoadLevel.All = cmd.On
		return nil
	}
	if _, ok := c.Nodes[cmd.Node]; !ok {
		return Errorf(CodeNotFound, "node %d is not in the node table", cmd.Node)
	}
	if cmd.Clear {
		delete(c.LoadLevel.Nodes, cmd.Node)
		return nil
	}
	if c.LoadLevel.Nodes == nil {
		c.LoadLevel.Nodes = map[uint32]bool{}
	}
	c.LoadLevel.Nodes[cmd.Node] = cmd.On
	return nil
}

func (l LoadLevel) clone() LoadLevel {
	out := LoadLevel{All: l.All}
	if l.Nodes != nil {
		out.Nodes = make(map[uint32]bool, len(l.Nodes))
		for k, v := range l.Nodes {
			out.Nodes[k] = v
		}
	}
	return out
}

// ApplyLoadLevel applies cmd to c outside the log (a view of a change
// that is committed but not yet applied here) and hands the result to set.
func ApplyLoadLevel(c *Cluster, cmd SetLoadLevel, set func(LoadLevel)) error {
	if err := applySetLoadLevel(c, cmd); err != nil {
		return err
	}
	set(c.LoadLevel)
	return nil
}

// CmdSetBlocked blocks a node (it takes no new jobs: no placement, no
// onnode, no migration to it) or unblocks it (ssi node block|unblock N).
const CmdSetBlocked CommandType = 13

// SetBlocked blocks or unblocks node Node.
type SetBlocked struct {
	Node    uint32 `json:"node"`
	Blocked bool   `json:"blocked"`
}

// IsBlocked reports whether node num takes no new jobs.
func (c *Cluster) IsBlocked(num uint32) bool { return c.Blocked[num] }

func applySetBlocked(c *Cluster, cmd SetBlocked) error {
	if _, ok := c.Nodes[cmd.Node]; !ok {
		return Errorf(CodeNotFound, "node %d is not in the node table", cmd.Node)
	}
	if !cmd.Blocked {
		delete(c.Blocked, cmd.Node)
		return nil
	}
	if c.Blocked == nil {
		c.Blocked = map[uint32]bool{}
	}
	c.Blocked[cmd.Node] = true
	return nil
}

func cloneBlocked(m map[uint32]bool) map[uint32]bool {
	if m == nil {
		return nil
	}
	out := make(map[uint32]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
