package robustness

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Knobs (make robustness sets the long ones).
func settings() (dur time.Duration, load bool) {
	dur = 40 * time.Second
	if s := os.Getenv("ROBUSTNESS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > 2*time.Hour {
			panic(fmt.Sprintf("ROBUSTNESS_DURATION=%q: want a duration up to 2h", s))
		}
		dur = d
	}
	return dur, os.Getenv("ROBUSTNESS_LOAD") != ""
}

const (
	nodes   = 5
	writers = 3
	readers = 2
	// maxAdds keeps the registrations under the cluster's 1024 node
	// numbers (numbers are never reused).
	maxAdds = 900
	// failureTimeout is the cluster's (the default): a DOWN within this
	// much (plus the slack below) after a fault on that node ends is the
	// fault's, not a false one.
	failureTimeout = time.Second
	downSlack      = 4 * time.Second
)

// recorder keeps the history, safe for the clients' goroutines.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	hung  []string

	notSent atomic.Int64 // writes the CLI could not even send (no daemon on the socket)
}

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) add(client int, call int64, in input, out output, ret int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

func (r *recorder) hang(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hung = append(r.hung, what)
}

// window is a time a fault was acting on a node.
type window struct {
	node     int
	from, to time.Time
	what     string
}

type faultLog struct {
	mu      sync.Mutex
	windows []window
	counts  map[string]int
	slow    []string // recoveries that took longer than expected
}

func (f *faultLog) record(what string, from, to time.Time, nodes ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[what]++
	for _, k := range nodes {
		f.windows = append(f.windows, window{k, from, to, what})
	}
}

func (f *faultLog) explains(k int, at time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.windows {
		if w.node == k && !at.Before(w.from.Add(-time.Second)) && !at.After(w.to.Add(failureTimeout+downSlack)) {
			return true
		}
	}
	return false
}

type event struct {
	Time  time.Time `json:"time"`
	Num   uint32    `json:"num"`
	From  string    `json:"from"`
	To    string    `json:"to"`
	Index uint64    `json:"index"`
}

// TestRobustness: concurrent writers and readers through the real CLI on
// a five-node --isolate cluster, while faults are injected one after
// another; then the checks (see the package comment).
func TestRobustness(t *testing.T) {
	dur, withLoad := settings()
	c := startCluster(t, nodes)
	rows, err := c.table(1)
	if err != nil {
		t.Fatal(err)
	}
	var firstNum uint32
	for _, r := range rows {
		firstNum = max(firstNum, r.Num+1)
	}
	if withLoad {
		stop, err := startLoad(dur + 30*time.Second)
		if err != nil {
			t.Fatalf("start the CPU load: %v", err)
		}
		defer stop()
	}
	rec := &recorder{start: time.Now()}
	faults := &faultLog{counts: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()

	var seq, adds atomic.Int64
	var ackedMu sync.Mutex
	var acked []string // MACs whose add was acknowledged
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				k := 1 + rand.IntN(nodes)
				p := rand.Float64()
				call := rec.now()
				switch {
				case p < 0.6 && adds.Load() < maxAdds:
					adds.Add(1)
					i := seq.Add(1)
					mac := fmt.Sprintf("0e:5b:00:00:%02x:%02x", i/256, i%256)
					ip := fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)
					r := c.cli(k, "addnode", "--hwaddr", mac, "--ipaddr", ip, "--nodename", fmt.Sprintf("rb%d", i), "--json")
					out := addOutcome(t, r)
					if out.Result == resOK {
						ackedMu.Lock()
						acked = append(acked, mac)
						ackedMu.Unlock()
					}
					finish(rec, w, call, input{Kind: opAdd, MAC: mac, Node: k}, out, r, "addnode "+mac)
				case p < 0.7:
					ackedMu.Lock()
					if len(acked) == 0 {
						ackedMu.Unlock()
						continue
					}
					mac := acked[rand.IntN(len(acked))]
					ackedMu.Unlock()
					// Same MAC, fresh IP and name: only the MAC clashes.
					i := seq.Add(1)
					r := c.cli(k, "addnode", "--hwaddr", mac, "--ipaddr", fmt.Sprintf("172.31.%d.%d", i/250, i%250+1), "--nodename", fmt.Sprintf("rb%d", i), "--json")
					finish(rec, w, call, input{Kind: opAdd, MAC: mac, Node: k}, addOutcome(t, r), r, "re-addnode "+mac)
				default:
					on := rand.IntN(2) == 0
					r := c.cli(k, "loadlevel", "-a", map[bool]string{true: "on", false: "off"}[on])
					finish(rec, w, call, input{Kind: opSetLL, On: on, Node: k}, plainOutcome(t, r), r, "loadlevel")
				}
			}
		}()
	}
	for rd := 0; rd < readers; rd++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := writers + rd
			for ctx.Err() == nil {
				k := 1 + rand.IntN(nodes)
				call := rec.now()
				if rand.Float64() < 0.7 {
					r := c.cli(k, "cluster", "-V", "--json")
					ret := rec.now()
					if r.Hung {
						rec.hang(fmt.Sprintf("node %d: cluster -V", k))
						continue
					}
					if r.Code != 0 {
						continue // refused or failed: a read that did not happen
					}
					var rs []row
					if err := json.Unmarshal([]byte(r.Stdout), &rs); err != nil {
						t.Errorf("node %d: cluster -V --json: %v: %q", k, err, r.Stdout)
						continue
					}
					rec.add(client, call, input{Kind: opRead, Node: k}, output{Table: suiteRows(rs)}, ret)
				} else {
					r := c.cli(k, "loadlevel")
					ret := rec.now()
					if r.Hung {
						rec.hang(fmt.Sprintf("node %d: loadlevel", k))
						continue
					}
					if r.Code != 0 {
						continue
					}
					on := strings.HasPrefix(r.Stdout, "load leveling: on ")
					if !on && !strings.HasPrefix(r.Stdout, "load leveling: off ") {
						t.Errorf("node %d: loadlevel printed %q", k, r.Stdout)
						continue
					}
					rec.add(client, call, input{Kind: opReadLL, Node: k}, output{On: on}, ret)
				}
			}
		}()
	}
	var events sync.Map // index -> event
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			collectEvents(c, &events)
			select {
			case <-ctx.Done():
			case <-time.After(3 * time.Second):
			}
		}
	}()
	injectFaults(ctx, t, c, faults)
	wg.Wait()

	// Heal, bring every node back, and wait for one table everywhere.
	c.healAll()
	for k := 1; k <= nodes; k++ {
		if c.daemonPID(k) == 0 {
			if err := c.restart(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A daemon may still be retrying a change its client gave up on
	// (consensus.ApplyTimeout, 5s): let that end before the final table.
	time.Sleep(6 * time.Second)
	final, convErr := converge(c, 90*time.Second)
	collectEvents(c, &events)

	// Checks.
	var s summary
	s.Command = commandLine()
	s.Duration, s.Load = dur, withLoad
	s.Faults = faults.counts
	s.Hung = rec.hung
	s.Slow = faults.slow
	unknownWhy := map[string]int{}
	for _, o := range rec.ops {
		in, out := o.Input.(input), o.Output.(output)
		if out.Result == resUnk {
			unknownWhy[shortReason(out.Msg)]++
		}
		s.Ops++
		switch {
		case in.Kind == opRead || in.Kind == opReadLL:
			s.Reads++
		case out.Result == resOK:
			s.OK++
		case out.Result == resRefuse:
			s.Refused++
		default:
			s.Unknown++
		}
	}
	s.UnknownWhy = unknownWhy
	s.NotSent = int(rec.notSent.Load())
	if convErr != nil {
		t.Errorf("the nodes did not converge: %v", convErr)
	} else {
		finalRows := map[string]uint32{}
		for _, r := range final {
			finalRows[strings.ToLower(r.HWAddr)] = r.Num
		}
		for _, o := range rec.ops {
			in, out := o.Input.(input), o.Output.(output)
			if in.Kind == opAdd && out.Result == resOK {
				if num, ok := finalRows[in.MAC]; !ok || num != out.Num {
					s.Lost = append(s.Lost, fmt.Sprintf("%s (acknowledged as node %d by node %d)", in.MAC, out.Num, in.Node))
				}
			}
		}
	}
	events.Range(func(_, v any) bool {
		e := v.(event)
		if e.To == "DOWN" {
			s.Downs++
			if !faults.explains(int(e.Num), e.Time) {
				s.FalseDowns = append(s.FalseDowns, fmt.Sprintf("node %d at %s (log index %d)", e.Num, e.Time.Format(time.RFC3339Nano), e.Index))
			}
		}
		return true
	})
	history := rec.ops
	if convErr == nil {
		history = resolveUnknown(rec.ops, final)
	}
	m := model(firstNum)
	m.Hash = func(st any) uint64 {
		h := fnv.New64a()
		fmt.Fprintf(h, "%v", st)
		return h.Sum64()
	}
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(m, history, checkTimeout())
	s.Verdict, s.CheckTime = string(res), time.Since(checkStart)
	if res == porcupine.Illegal {
		viz := filepath.Join(os.TempDir(), fmt.Sprintf("ssi-robustness-%d.html", time.Now().Unix()))
		if err := porcupine.VisualizePath(m, info, viz); err == nil {
			s.Visualization = viz
		}
		s.Explanation = explain(m, history)
	}
	report := s.String()
	t.Log("\n" + report)
	if p := os.Getenv("ROBUSTNESS_SUMMARY"); p != "" {
		_ = os.WriteFile(p, []byte(report), 0o644)
	}
	if len(s.Hung) > 0 {
		t.Errorf("%d clients hung (no answer within %v): %v", len(s.Hung), clientTimeout, s.Hung)
	}
	if len(s.Lost) > 0 {
		t.Errorf("%d acknowledged writes lost: %v", len(s.Lost), s.Lost)
	}
	if res != porcupine.Ok {
		t.Errorf("linearizability: %s (visualization: %s)", res, s.Visualization)
	}
	if s.OK == 0 || s.Reads == 0 {
		t.Errorf("the run acknowledged %d writes and %d reads: nothing was checked", s.OK, s.Reads)
	}
}

// addOutcome classifies an addnode run: exit 0 with the number, 1 refused
// (the cluster said no), anything else unknown (255: ssi failed or the
// outcome is unknown; -1: killed at the deadline).
func addOutcome(t *testing.T, r cliResult) output {
	out := plainOutcome(t, r)
	if out.Result == resOK {
		var added []struct {
			Num uint32 `json:"num"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &added); err != nil || len(added) != 1 {
			t.Errorf("addnode --json printed %q (%v)", r.Stdout, err)
			return output{Result: resUnk}
		}
		out.Num = added[0].Num
	}
	return out
}

func plainOutcome(t *testing.T, r cliResult) output {
	switch r.Code {
	case 0:
		return output{Result: resOK}
	case 1:
		return output{Result: resRefuse, Msg: strings.TrimSpace(r.Stderr)}
	case 2:
		t.Errorf("usage error from the suite's own command: %s", r.Stderr)
	}
	return output{Result: resUnk, Msg: strings.TrimSpace(r.Stderr)}
}

func finish(rec *recorder, client int, call int64, in input, out output, r cliResult, what string) {
	ret := rec.now()
	if r.Hung {
		rec.hang(fmt.Sprintf("node %d: %s", in.Node, what))
	}
	if out.Result == resUnk && notSent(r) {
		// The CLI could not connect to its daemon (killed): the request
		// never left it, so nothing can have been made.
		rec.notSent.Add(1)
		return
	}
	if out.Result == resUnk {
		ret = neverReturned
	}
	rec.add(client, call, in, out, ret)
}

func notSent(r cliResult) bool {
	return r.Code == 255 && (strings.Contains(r.Stderr, "no ssi daemon is listening on") || strings.Contains(r.Stderr, "connect to the ssi daemon at"))
}

// suiteRows is the canonical form of the rows the suite registered.
func suiteRows(rs []row) string {
	m := map[string]uint32{}
	for _, r := range rs {
		if mac := strings.ToLower(r.HWAddr); strings.HasPrefix(mac, "0e:5b:") {
			m[mac] = r.Num
		}
	}
	return canonicalRows(m)
}

func collectEvents(c *cluster, into *sync.Map) {
	for _, k := range rand.Perm(c.n) {
		r := c.cli(k+1, "cluster", "--events", "--json")
		if r.Code != 0 {
			continue
		}
		var es []event
		if json.Unmarshal([]byte(r.Stdout), &es) != nil {
			continue
		}
		for _, e := range es {
			into.Store(e.Index, e)
		}
		return
	}
}

// converge waits until every node answers with the same table (numbers,
// MACs, IPs, names) and sees every node UP.
func converge(c *cluster, timeout time.Duration) ([]row, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		var first []row
		same, msg := true, ""
		for k := 1; k <= c.n && same; k++ {
			rs, err := c.table(k)
			if err != nil {
				same, msg = false, err.Error()
				break
			}
			for _, r := range rs {
				if int(r.Num) <= c.n && r.State != "UP" {
					same, msg = false, fmt.Sprintf("node %d sees node %d %s", k, r.Num, r.State)
				}
			}
			if k == 1 {
				first = rs
			} else if a, b := tableKey(first), tableKey(rs); a != b {
				same, msg = false, fmt.Sprintf("node %d's table differs from node 1's", k)
			}
		}
		if same {
			return first, nil
		}
		last = msg
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("after %v: %s", timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func tableKey(rs []row) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%d %s %s %s", r.Num, strings.ToLower(r.HWAddr), r.IPAddr, r.Name))
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

func commandLine() string {
	var env []string
	for _, k := range []string{"ROBUSTNESS_DURATION", "ROBUSTNESS_LOAD", "ROBUSTNESS_RACE"} {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return strings.TrimSpace(strings.Join(env, " ") + " go test -run TestRobustness -v ./test/robustness/")
}

type summary struct {
	Command                 string
	Duration                time.Duration
	Load                    bool
	Ops, Reads, OK, Refused int
	Unknown, Downs          int
	Faults                  map[string]int
	Lost, Hung, FalseDowns  []string
	Slow                    []string
	Verdict                 string
	CheckTime               time.Duration
	Visualization           string
	Explanation             string
	UnknownWhy              map[string]int
	NotSent                 int
}

func (s summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "robustness: %s\n", s.Command)
	fmt.Fprintf(&b, "  duration %v, CPU load generator: %v\n", s.Duration, s.Load)
	fmt.Fprintf(&b, "  operations: %d (%d reads; writes: %d ok, %d refused, %d unknown); %d more writes not sent (their node's daemon was down)\n", s.Ops, s.Reads, s.OK, s.Refused, s.Unknown, s.NotSent)
	var why []string
	for k, v := range s.UnknownWhy {
		why = append(why, fmt.Sprintf("%5d  %s", v, k))
	}
	sort.Sort(sort.Reverse(sort.StringSlice(why)))
	if len(why) > 6 {
		why = why[:6]
	}
	for _, w := range why {
		fmt.Fprintf(&b, "    unknown: %s\n", w)
	}
	var names []string
	total := 0
	for k, v := range s.Faults {
		names = append(names, fmt.Sprintf("%s %d", k, v))
		total += v
	}
	sort.Strings(names)
	fmt.Fprintf(&b, "  faults injected: %d (%s)\n", total, strings.Join(names, ", "))
	fmt.Fprintf(&b, "  lost acknowledged writes: %d %v\n", len(s.Lost), s.Lost)
	fmt.Fprintf(&b, "  linearizability (porcupine): %s (checked in %v)\n", s.Verdict, s.CheckTime.Round(time.Millisecond))
	fmt.Fprintf(&b, "  hung clients (no answer within %v): %d %v\n", clientTimeout, len(s.Hung), s.Hung)
	fmt.Fprintf(&b, "  DOWN transitions: %d, of nodes no fault touched (false DOWNs): %d %v\n", s.Downs, len(s.FalseDowns), s.FalseDowns)
	if len(s.Slow) > 0 {
		fmt.Fprintf(&b, "  slow recoveries: %v\n", s.Slow)
	}
	if s.Visualization != "" {
		fmt.Fprintf(&b, "  porcupine visualization: %s\n", s.Visualization)
	}
	b.WriteString(s.Explanation)
	return b.String()
}

// checkTimeout bounds porcupine's search (ROBUSTNESS_CHECK_TIMEOUT).
func checkTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("ROBUSTNESS_CHECK_TIMEOUT")); err == nil && d > 0 {
		return d
	}
	return 2 * time.Minute
}

// resolveUnknown uses the final table, read once nothing can still change
// it, to settle registrations whose client never learned the outcome: one
// whose MAC is not there was not made, and is left out (an operation
// without effect and without an answer is no operation); one whose MAC is
// there was made and got that number (still at an unknown time).
func resolveUnknown(ops []porcupine.Operation, final []row) []porcupine.Operation {
	nums := map[string]uint32{}
	for _, r := range final {
		nums[strings.ToLower(r.HWAddr)] = r.Num
	}
	out := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		in, res := o.Input.(input), o.Output.(output)
		if in.Kind == opAdd && res.Result == resUnk {
			num, ok := nums[in.MAC]
			if !ok {
				continue
			}
			if !isReAdd(ops, o) {
				res.Num = num
				o.Output = res
			}
		}
		out = append(out, o)
	}
	return out
}

// isReAdd: o is an add of a MAC some earlier add already registered (the
// suite re-adds acknowledged MACs to check they are refused).
func isReAdd(ops []porcupine.Operation, o porcupine.Operation) bool {
	mac := o.Input.(input).MAC
	for _, p := range ops {
		if p.Input.(input).Kind == opAdd && p.Input.(input).MAC == mac && p.Call < o.Call && p.Output.(output).Result == resOK {
			return true
		}
	}
	return false
}

// shortReason is the gist of a CLI's message, for the summary's counts.
func shortReason(msg string) string {
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if i := strings.Index(msg, ": "); i >= 0 && i < 20 {
		msg = msg[i+2:] // the program name
	}
	var b strings.Builder
	for _, r := range msg {
		if r >= '0' && r <= '9' {
			r = 'N'
		}
		b.WriteRune(r)
	}
	m := b.String()
	if len(m) > 90 {
		m = m[:90]
	}
	return m
}
