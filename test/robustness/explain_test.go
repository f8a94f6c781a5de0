package robustness

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// explain says, for a history porcupine refused, which object's history
// is not linearizable and the plainest witnesses it can find: reads that
// miss a registration acknowledged before they were called, reads that go
// back in time, and switch reads that miss the one write before them.
func explain(m porcupine.Model, h []porcupine.Operation) string {
	var b strings.Builder
	parts := m.Partition(h)
	for i, name := range []string{"node table", "load-leveling switch"} {
		if !porcupine.CheckOperations(porcupine.Model{Init: m.Init, Step: m.Step, Hash: m.Hash}, parts[i]) {
			fmt.Fprintf(&b, "the %s's history (%d operations) is not linearizable\n", name, len(parts[i]))
		}
	}
	ms := func(t int64) string { return (time.Duration(t)).Round(time.Millisecond).String() }
	var ws []string
	byTime := append([]porcupine.Operation(nil), parts[0]...)
	sort.Slice(byTime, func(i, j int) bool { return byTime[i].Call < byTime[j].Call })
	for _, r := range byTime {
		if r.Input.(input).Kind != opRead {
			continue
		}
		seen := parseRows(r.Output.(output).Table)
		for _, a := range byTime {
			in, out := a.Input.(input), a.Output.(output)
			if in.Kind == opAdd && out.Result == resOK && a.Return < r.Call {
				if _, ok := seen[in.MAC]; !ok {
					ws = append(ws, fmt.Sprintf("read on node %d at %s..%s misses %s, acknowledged as node %d by node %d at %s",
						r.Input.(input).Node, ms(r.Call), ms(r.Return), in.MAC, out.Num, in.Node, ms(a.Return)))
					break
				}
			}
			if in.Kind == opRead && a.Return < r.Call {
				for mac := range parseRows(out.Table) {
					if _, ok := seen[mac]; !ok {
						ws = append(ws, fmt.Sprintf("read on node %d at %s..%s misses %s, which a read on node %d saw at %s..%s",
							r.Input.(input).Node, ms(r.Call), ms(r.Return), mac, in.Node, ms(a.Call), ms(a.Return)))
						break
					}
				}
			}
		}
		if len(ws) > 12 {
			break
		}
	}
	ll := parts[1]
	for _, r := range ll {
		if r.Input.(input).Kind != opReadLL {
			continue
		}
		var last *porcupine.Operation
		concurrent := false
		for i := range ll {
			s := &ll[i]
			if s.Input.(input).Kind != opSetLL {
				continue
			}
			if s.Return < r.Call && s.Output.(output).Result == resOK {
				if last == nil || s.Return > last.Return {
					last = s
				}
			}
		}
		if last == nil {
			continue
		}
		for i := range ll {
			s := &ll[i]
			if s != last && s.Input.(input).Kind == opSetLL && s.Call <= r.Return && s.Return >= last.Call {
				concurrent = true
			}
		}
		if !concurrent && r.Output.(output).On != last.Input.(input).On {
			ws = append(ws, fmt.Sprintf("loadlevel read on node %d at %s..%s says %v; the only write before it, loadlevel %v on node %d, returned at %s",
				r.Input.(input).Node, ms(r.Call), ms(r.Return), r.Output.(output).On, last.Input.(input).On, last.Input.(input).Node, ms(last.Return)))
		}
		if len(ws) > 24 {
			break
		}
	}
	for _, w := range ws {
		fmt.Fprintf(&b, "  %s\n", w)
	}
	return b.String()
}
