// Package clms owns cluster membership decisions (OpenSSI's CLMS): which
// node transitions the leader proposes from the heartbeats it receives. Nodes
// heartbeat to the leader; a live node whose heartbeats stop for the failure
// timeout is proposed DOWN, a DOWN node that heartbeats again COMINGUP, a
// COMINGUP node that has applied the log up to its transition UP, and a node
// that restarted behind the leader's back (new boot ID) COMINGUP again. Every
// transition goes through the replicated log, so all nodes see the same
// sequence. The package is pure: time is passed in, nothing is sent.
package clms

import (
	"fmt"
	"sync"
	"time"

	"github.com/ssi-cluster/ssi/internal/state"
)

// Heartbeat is what a node reports.
type Heartbeat struct {
	Num     uint32
	BootID  string
	Applied uint64  // last log index the node has applied
	Load    float64 // the node's load figure (see internal/load)

	RunQueue float64 // details of the load, for `loads`
	CPUBusy  float64
	NCPU     int
	MemFree  uint64
}

// JoinGrace is how long a node that has joined may take to start its daemon
// and send its first heartbeat before it is declared DOWN.
const JoinGrace = 30 * time.Second

type seen struct {
	at time.Time
	hb Heartbeat
}

// Detector is the leader's view of heartbeats. It is reset whenever this
// node becomes leader.
type Detector struct {
	mu      sync.Mutex
	timeout time.Duration
	start   time.Time // leadership start: the grace period's origin
	last    map[uint32]seen
}

// NewDetector returns a detector with the given failure timeout.
func NewDetector(timeout time.Duration) *Detector {
	return &Detector{timeout: timeout, last: map[uint32]seen{}}
}

// SetTimeout changes the failure timeout.
func (d *Detector) SetTimeout(t time.Duration) {
	d.mu.Lock()
	d.timeout = t
	d.mu.Unlock()
}

// Reset starts a new term of leadership at now: every node gets a full
// timeout of grace, except the previous leader (prev, 0 if unknown), which we
// already know stopped answering, and which gets only a quarter of it.
func (d *Detector) Reset(now time.Time, prev uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.start = now
	d.last = map[uint32]seen{}
	if prev != 0 {
		d.last[prev] = seen{at: now.Add(-d.timeout * 3 / 4)}
	}
}

// Stalled credits every node with a time the leader itself did not run
// (its process was starved of CPU or stopped): gap is how much later than
// due its loop ran. Heartbeats sent meanwhile wait unread in its sockets,
// so without the credit a leader that resumes judges live nodes silent
// ("no heartbeat for 1.767s" on a busy machine: issue 10). A node that
// really died during the stall is found that much later.
func (d *Detector) Stalled(gap time.Duration) {
	if gap <= 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.start = d.start.Add(gap)
	for n, s := range d.last {
		s.at = s.at.Add(gap)
		d.last[n] = s
	}
}

// Observe records a heartbeat received at now.
func (d *Detector) Observe(hb Heartbeat, now time.Time) {
	d.mu.Lock()
	d.last[hb.Num] = seen{at: now, hb: hb}
	d.mu.Unlock()
}

// Loads returns the last reported load of every node heard from within the
// timeout.
func (d *Detector) Loads(now time.Time) map[uint32]float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[uint32]float64{}
	for n, s := range d.last {
		if s.hb.BootID != "" && now.Sub(s.at) <= d.timeout {
			out[n] = s.hb.Load
		}
	}
	return out
}

// Heartbeats returns the last heartbeat of every node heard from within the
// timeout.
func (d *Detector) Heartbeats(now time.Time) map[uint32]Heartbeat {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[uint32]Heartbeat{}
	for n, s := range d.last {
		if s.hb.BootID != "" && now.Sub(s.at) <= d.timeout {
			out[n] = s.hb
		}
	}
	return out
}

// Alive reports whether num was heard from within the timeout.
func (d *Detector) Alive(num uint32, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.last[num]
	return ok && s.hb.BootID != "" && now.Sub(s.at) <= d.timeout
}

// Decide returns the transitions to propose for the cluster as it is now.
// Each carries From, so a proposal that raced with another change is
// refused by the state machine instead of undoing it.
func (d *Detector) Decide(c *state.Cluster, now time.Time) []state.SetState {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []state.SetState
	for _, n := range c.SortedNodes() {
		s, heard := d.last[n.Num]
		at := s.at
		if !heard {
			// Silent since this leader took over, or since the node
			// entered its state if that was later (it joined since).
			at = d.start
			if n.StateSince.After(at) {
				at = n.StateSince
			}
		}
		silent := now.Sub(at)
		fresh := heard && s.hb.BootID != "" && silent <= d.timeout
		switch {
		case n.State == state.ComingUp && n.BootID == "" && !heard && now.Sub(n.StateSince) < JoinGrace:
			// Joined (token used) but its daemon has not started yet.
		case n.State.Live() && silent > d.timeout:
			out = append(out, state.SetState{Num: n.Num, To: state.Down, From: []state.NodeState{n.State},
				Reason: fmt.Sprintf("no heartbeat for %v", silent.Round(time.Millisecond)), Time: now})
		case !fresh:
		case n.State == state.Down && s.hb.Applied >= n.StateIndex:
			// The node has applied its own DOWN entry, so this heartbeat
			// was sent after it: it is back (a heartbeat still in flight
			// from a node that just left carries an older index).
			out = append(out, state.SetState{Num: n.Num, To: state.ComingUp, From: []state.NodeState{state.Down},
				BootID: s.hb.BootID, Reason: "heartbeat from a DOWN node: it is back", Time: now})
		case n.State == state.Up && n.BootID != "" && s.hb.BootID != n.BootID:
			out = append(out, state.SetState{Num: n.Num, To: state.ComingUp, From: []state.NodeState{state.Up},
				BootID: s.hb.BootID, Reason: "node restarted", Time: now})
		case n.State == state.ComingUp && s.hb.Applied >= n.StateIndex:
			out = append(out, state.SetState{Num: n.Num, To: state.Up, From: []state.NodeState{state.ComingUp},
				BootID: s.hb.BootID, Reason: "caught up with the cluster log", Time: now})
		}
	}
	return out
}
