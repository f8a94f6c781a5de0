package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// What the page shows, sampled once for every watcher.

type nodeView struct {
	Num     uint32  `json:"num"`
	Name    string  `json:"name"`
	HWAddr  string  `json:"hwaddr"`
	IPAddr  string  `json:"ipaddr"`
	State   string  `json:"state"`
	Since   int64   `json:"since"` // Unix ms
	Role    string  `json:"role"`
	Load    float64 `json:"load"`
	CPUBusy float64 `json:"cpu_busy"`
	RunQ    float64 `json:"run_queue"`
	NCPU    uint32  `json:"ncpu"`
	MemFree uint64  `json:"mem_free"`
	Procs   int     `json:"procs"`
	HasLoad bool    `json:"has_load"`
}

type procView struct {
	CPID       int64   `json:"cpid"`
	Node       uint32  `json:"node"`
	PID        int32   `json:"pid"`
	User       string  `json:"user"`
	State      string  `json:"state"`
	CPU        float64 `json:"cpu"`
	RSS        uint64  `json:"rss"` // bytes
	Start      int64   `json:"start"`
	TimeMs     int64   `json:"time_ms"`
	Cmd        string  `json:"cmd"`
	Migratable bool    `json:"migratable"`
	Detached   bool    `json:"detached"`
	Child      bool    `json:"child"` // a process the job forked (same CPID)
}

type eventView struct {
	Time     int64  `json:"time"`
	Index    uint64 `json:"index"`
	Kind     string `json:"kind"` // membership, migration, voter
	Node     uint32 `json:"node"`
	Name     string `json:"name"`
	From     string `json:"from"`
	To       string `json:"to"`
	Reason   string `json:"reason"`
	CPID     int64  `json:"cpid,omitempty"`
	FromNode uint32 `json:"from_node,omitempty"`
}

// EventKindLabel is the short name of an event's kind.
func EventKindLabel(k ssiv1.EventKind) string {
	switch k {
	case ssiv1.EventKind_EVENT_KIND_MEMBERSHIP:
		return "membership"
	case ssiv1.EventKind_EVENT_KIND_MIGRATION:
		return "migration"
	case ssiv1.EventKind_EVENT_KIND_VOTER:
		return "voter"
	}
	return "unknown"
}

func eventViews(evs []*ssiv1.ClusterEvent) []eventView {
	out := make([]eventView, 0, len(evs))
	for _, e := range evs {
		out = append(out, eventView{Time: e.TimeUnixMs, Index: e.Index, Kind: EventKindLabel(e.Kind), Node: e.Node, Name: e.NodeName,
			From: e.From.Label(), To: e.To.Label(), Reason: e.Reason, CPID: e.Cpid, FromNode: e.FromNode})
	}
	return out
}

type historyPoint struct {
	T    int64   `json:"t"` // Unix ms
	Load float64 `json:"load"`
	Mem  uint64  `json:"mem"`
}

type snapshot struct {
	Time        int64                     `json:"time"`
	Cluster     string                    `json:"cluster"`
	Self        uint32                    `json:"self"`
	Leader      uint32                    `json:"leader"`
	Nodes       []nodeView                `json:"nodes"`
	Procs       []procView                `json:"procs"`
	Unreachable []string                  `json:"unreachable,omitempty"`
	Errors      []string                  `json:"errors,omitempty"`
	History     map[uint32][]historyPoint `json:"history,omitempty"` // only in a stream's first snapshot
}

// sample reads the node table, the loads and (when someone watches) the
// cluster's processes through the Control handlers, as the daemon's own
// user: what any token holder may see.
func (w *Web) sample(ctx context.Context, withProcs bool) *snapshot {
	ctx, cancel := context.WithTimeout(transport.WithCaller(ctx, transport.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}), 5*time.Second)
	defer cancel()
	s := &snapshot{Time: time.Now().UnixMilli(), Self: w.cfg.Self, Cluster: w.cfg.FSM.ClusterName()}
	st, err := w.cfg.Control.Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{Stale: true}))
	if err != nil {
		s.Errors = append(s.Errors, "node table: "+connect.CodeOf(err).String())
		return s
	}
	s.Leader = st.Msg.LeaderNum
	byNum := map[uint32]*nodeView{}
	for _, n := range st.Msg.Nodes {
		s.Nodes = append(s.Nodes, nodeView{Num: n.Num, Name: n.Name, HWAddr: n.Hwaddr, IPAddr: n.Ipaddr, State: n.State.Label(), Since: n.StateSinceUnixMs, Role: n.Role.Label()})
	}
	sort.Slice(s.Nodes, func(a, b int) bool { return s.Nodes[a].Num < s.Nodes[b].Num })
	for i := range s.Nodes {
		byNum[s.Nodes[i].Num] = &s.Nodes[i]
	}
	if l, err := w.cfg.Control.Loads(ctx, connect.NewRequest(&ssiv1.LoadsRequest{})); err == nil {
		for _, x := range l.Msg.Loads {
			if n := byNum[x.Num]; n != nil && n.State == "UP" {
				n.Load, n.CPUBusy, n.RunQ, n.NCPU, n.MemFree, n.HasLoad = x.Load, x.CpuBusy, x.RunQueue, x.Ncpu, x.MemFree, true
			}
		}
	} else {
		s.Errors = append(s.Errors, "loads: "+err.Error())
	}
	if withProcs {
		p, err := w.cfg.Control.Procs(ctx, connect.NewRequest(&ssiv1.ProcsRequest{All: true}))
		if err != nil {
			s.Errors = append(s.Errors, "processes: "+err.Error())
		} else {
			s.Unreachable = p.Msg.Unreachable
			for _, x := range p.Msg.Procs {
				// A job's forked processes share its CPID and follow it,
				// their commands marked as ps marks them.
				child := strings.HasPrefix(x.Cmd, `\_ `)
				s.Procs = append(s.Procs, procView{CPID: x.Cpid, Node: x.Node, PID: x.Pid, User: x.User, State: x.State, CPU: x.Cpu, RSS: x.Rss,
					Start: x.StartUnixMs, TimeMs: x.CpuTimeMs, Cmd: x.Cmd, Migratable: x.Migratable, Detached: x.Detached, Child: child})
				if n := byNum[x.Node]; n != nil && !child {
					n.Procs++
				}
			}
			sort.SliceStable(s.Procs, func(a, b int) bool {
				if s.Procs[a].CPID != s.Procs[b].CPID {
					return s.Procs[a].CPID < s.Procs[b].CPID
				}
				return !s.Procs[a].Child && s.Procs[b].Child
			})
		}
	}
	if withProcs {
		w.mu.Lock()
		w.last = s // what a new stream starts with
		w.mu.Unlock()
	}
	return s
}

// record adds a sample to the load history.
func (w *Web) record(s *snapshot) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[uint32]bool{}
	for _, n := range s.Nodes {
		seen[n.Num] = true
		if !n.HasLoad {
			continue
		}
		h := append(w.history[n.Num], historyPoint{T: s.Time, Load: n.Load, Mem: n.MemFree})
		if len(h) > historyLen {
			h = append([]historyPoint(nil), h[len(h)-historyLen:]...)
		}
		w.history[n.Num] = h
	}
	for num := range w.history {
		if !seen[num] {
			delete(w.history, num) // removed from the table
		}
	}
}

func (w *Web) watchers() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.subs)
}

// broadcast sends one event to every stream; a stream too slow to take
// it is ended (its page reconnects and starts afresh).
func (w *Web) broadcast(kind string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		w.log.Error("dashboard: encode", "err", err)
		return
	}
	msg := []byte(fmt.Sprintf("event: %s\ndata: %s\n\n", kind, b))
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.subs {
		select {
		case ch <- msg:
		default:
			delete(w.subs, ch)
			close(ch)
		}
	}
}

// stream serves the page's live view as server-sent events: the latest
// snapshot with the load history and the recent events at once, then a
// snapshot every second and every new event, until the client goes, the
// token expires or the node stops.
func (w *Web) stream(rw http.ResponseWriter, r *http.Request, c Claims) {
	select {
	case w.streams <- struct{}{}:
		defer func() { <-w.streams }()
	default:
		httpError(rw, http.StatusServiceUnavailable, "too many dashboards are watching this node; try another node or later")
		return
	}
	rc := http.NewResponseController(rw)
	_ = rc.SetReadDeadline(time.Time{}) // a stream outlives the request's read timeout
	h := rw.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	ctx, cancel := context.WithDeadline(r.Context(), time.Unix(c.Expires, 0))
	defer cancel()

	ch := make(chan []byte, 16)
	w.mu.Lock()
	w.subs[ch] = struct{}{}
	first := w.last
	hist := make(map[uint32][]historyPoint, len(w.history))
	for k, v := range w.history {
		hist[k] = append([]historyPoint(nil), v...)
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if _, ok := w.subs[ch]; ok {
			delete(w.subs, ch)
			close(ch)
		}
		w.mu.Unlock()
	}()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeLimit))
		if _, err := rw.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	event := func(kind string, v any) bool {
		b, err := json.Marshal(v)
		if err != nil {
			return false
		}
		return write([]byte(fmt.Sprintf("event: %s\ndata: %s\n\n", kind, b)))
	}
	if first == nil {
		first = w.sample(ctx, true)
	}
	withHist := *first
	withHist.History = hist
	evs, newest := eventsAfter(w.cfg.FSM.Cluster(), 0, 200)
	if !event("snapshot", &withHist) || !event("events", eventViews(evs)) {
		return
	}
	go func() {
		// New events as this node applies them; they go through the
		// stream's channel like the snapshots.
		_ = follow(ctx, w.cfg.FSM, newest, func(e *ssiv1.ClusterEvent) error {
			b, _ := json.Marshal(eventViews([]*ssiv1.ClusterEvent{e}))
			w.mu.Lock()
			defer w.mu.Unlock()
			if _, ok := w.subs[ch]; !ok {
				return context.Canceled
			}
			select {
			case ch <- []byte(fmt.Sprintf("event: events\ndata: %s\n\n", b)):
			default:
			}
			return nil
		})
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-ch:
			if !ok || !write(msg) {
				return
			}
		}
	}
}
