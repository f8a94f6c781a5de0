package state

import "time"

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
