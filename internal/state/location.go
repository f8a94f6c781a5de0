package state

import (
	"fmt"
	"time"
)

// CmdSetLocation records where a process that moved runs now.
const CmdSetLocation CommandType = 11

// SetLocation records that the process with cluster PID CPID now runs on
// node Node. A process that never moved has no record: it runs where it
// was created (the node its CPID names), so creating a process costs no
// log entry. Node 0 drops the record (the process ended, or came back to
// the node that created it).
type SetLocation struct {
	CPID int64     `json:"cpid"`
	Node uint32    `json:"node"`
	Time time.Time `json:"time"`
}

// Location is the node recorded for a moved process, if any.
func (c *Cluster) Location(cpid int64) (uint32, bool) {
	n, ok := c.Locations[cpid]
	return n, ok
}

func applySetLocation(c *Cluster, cmd SetLocation) error {
	if cmd.CPID <= 0 {
		return Errorf(CodeInvalid, "%d is not a cluster PID", cmd.CPID)
	}
	if cmd.Node == 0 {
		delete(c.Locations, cmd.CPID)
		return nil
	}
	if _, ok := c.Nodes[cmd.Node]; !ok {
		return Errorf(CodeNotFound, "node %d is not in the node table", cmd.Node)
	}
	if c.Locations == nil {
		c.Locations = map[int64]uint32{}
	}
	c.Locations[cmd.CPID] = cmd.Node
	return nil
}

func cloneLocations(m map[int64]uint32) map[int64]uint32 {
	if m == nil {
		return nil
	}
	out := make(map[int64]uint32, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// CmdMoved records that a process moved (migrate, the leveler, expel,
// restart): its location as SetLocation does, and an event in the
// cluster's history (cluster --events) on the node it moved to.
const CmdMoved CommandType = 14

// Moved is a process that moved from node From to node To. Record is the
// location to keep: To, or 0 when To is the node that created it.
type Moved struct {
	CPID   int64     `json:"cpid"`
	From   uint32    `json:"from"`
	To     uint32    `json:"to"`
	Record uint32    `json:"record"`
	Why    string    `json:"why"`
	Time   time.Time `json:"time"`
}

func applyMoved(c *Cluster, cmd Moved, index uint64) error {
	to, ok := c.Nodes[cmd.To]
	switch {
	case !ok:
		return Errorf(CodeNotFound, "node %d is not in the node table", cmd.To)
	case cmd.Record != 0 && cmd.Record != cmd.To:
		return Errorf(CodeInvalid, "the location of process %d must be the node it moved to or none", cmd.CPID)
	}
	if err := applySetLocation(c, SetLocation{CPID: cmd.CPID, Node: cmd.Record, Time: cmd.Time}); err != nil {
		return err
	}
	netFollow(c, cmd.CPID, cmd.To)
	why := cmd.Why
	if why == "" {
		why = "migrate"
	}
	reason := fmt.Sprintf("process %d moved here from node %d (%s)", cmd.CPID, cmd.From, why)
	if cmd.From == 0 {
		reason = fmt.Sprintf("process %d restarted here (%s)", cmd.CPID, why)
	}
	c.Events = append(c.Events, Event{Time: cmd.Time, Num: cmd.To, From: to.State, To: to.State, Reason: reason, Index: index})
	if len(c.Events) > MaxEvents {
		c.Events = append([]Event(nil), c.Events[len(c.Events)-MaxEvents:]...)
	}
	return nil
}
