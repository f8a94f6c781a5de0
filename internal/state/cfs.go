package state

import "time"

// CmdSetCFS changes who serves the cluster filesystem and who replicates
// it (internal/cfs, docs/CFS.md "Replica and failover").
const CmdSetCFS CommandType = 30

// CFS is who serves the cluster filesystem. With no record (Cluster.CFS
// nil) every node follows its own --cfs-server (node 1 by default).
type CFS struct {
	Server  uint32 `json:"server"`
	Replica uint32 `json:"replica,omitempty"` // 0: none
	// Synced: the replica holds every change the server has acknowledged
	// since this record was written, so it may take over. Only the server
	// sets it (after a full copy), and it clears it before it acknowledges
	// a change the replica did not take.
	Synced bool `json:"synced,omitempty"`
	// Failovers counts the times a replica took over.
	Failovers uint64 `json:"failovers,omitempty"`
}

// SetCFS replaces the record. When Expect is set the command applies only
// if the current record (the effective one: Expect.Server is the server
// nodes follow without a record) equals it, else it is refused with
// CodeConflict: the server, the leader and an administrator race, and this
// keeps them honest.
type SetCFS struct {
	CFS    CFS       `json:"cfs"`
	Expect *CFS      `json:"expect,omitempty"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}

func applySetCFS(c *Cluster, cmd SetCFS) error {
	cur := CFS{}
	if c.CFS != nil {
		cur = *c.CFS
	}
	if cmd.Expect != nil {
		want := *cmd.Expect
		if c.CFS == nil {
			// Without a record the server is each node's default: the
			// proposer names the one it follows.
			cur.Server = want.Server
		}
		if cur != want {
			return Errorf(CodeConflict, "the cluster filesystem's record changed (now server %d, replica %d, synced %v)", cur.Server, cur.Replica, cur.Synced)
		}
	}
	n := cmd.CFS
	if n.Server == 0 {
		return Errorf(CodeInvalid, "the cluster filesystem needs a serving node")
	}
	if _, ok := c.Nodes[n.Server]; !ok {
		return Errorf(CodeNotFound, "node %d is not in the node table", n.Server)
	}
	if n.Replica != 0 {
		if _, ok := c.Nodes[n.Replica]; !ok {
			return Errorf(CodeNotFound, "node %d is not in the node table", n.Replica)
		}
		if n.Replica == n.Server {
			return Errorf(CodeInvalid, "node %d cannot replicate the cluster filesystem it serves", n.Server)
		}
	} else if n.Synced {
		return Errorf(CodeInvalid, "no replica to be in sync")
	}
	if n.Failovers < cur.Failovers {
		n.Failovers = cur.Failovers
	}
	c.CFS = &n
	return nil
}

// CFSServer is the node that serves the cluster filesystem: the record's,
// or def (the node's own default) without one.
func (c *Cluster) CFSServer(def uint32) uint32 {
	if c.CFS != nil && c.CFS.Server != 0 {
		return c.CFS.Server
	}
	return def
}

// CFSRecord is the record, with def as the server when there is none.
func (c *Cluster) CFSRecord(def uint32) CFS {
	if c.CFS != nil {
		return *c.CFS
	}
	return CFS{Server: def}
}

// CmdSetJobRoot turns the cluster root as jobs' / on or off for every node
// (ssi cfs jobroot on|off; docs/CFS.md "Jobs with the cluster root as /").
const CmdSetJobRoot CommandType = 31

// SetJobRoot is the cluster setting: jobs started through ssi get the
// cluster filesystem as their /. A node started with --cfs-job-root does
// so whatever the setting.
type SetJobRoot struct {
	On bool `json:"on"`
}
