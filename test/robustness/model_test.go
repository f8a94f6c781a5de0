package robustness

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// The operations the suite runs, as porcupine sees them. Two independent
// objects, checked as separate partitions (linearizability is local):
//
//   - the node table, restricted to the rows the suite registers: add(MAC)
//     (ssi-addnode --json) answers the number it gave, which the state
//     machine takes from a counter (NextNum), or is refused when the MAC
//     is already registered; read (cluster -V --json) answers every row.
//   - the cluster's load-leveling switch, a register: set (loadlevel -a
//     on|off) and read (loadlevel).
const (
	opAdd     = "add"
	opRead    = "read"
	opSetLL   = "setll"
	opReadLL  = "readll"
	resOK     = "ok"
	resRefuse = "refused"
	resUnk    = "unknown"
)

type input struct {
	Kind string
	MAC  string // add
	On   bool   // setll
	Node int    // the node whose socket the client used (for the report)
}

type output struct {
	Result string // ok, refused, unknown
	Num    uint32 // add: the number given (unknown: the one the final table shows, 0 if none)
	Table  string // read: canonicalRows of the suite's rows
	On     bool   // readll
	Msg    string // refused/unknown: what the CLI said (for the report)
}

// tableState is the model's node table: the suite's rows in canonical form
// and the next number the state machine will give. A comparable struct, so
// porcupine's default == is the equality.
type tableState struct {
	Rows string
	Next uint32
}

// canonicalRows is "mac=num," per row, sorted by MAC.
func canonicalRows(rows map[string]uint32) string {
	macs := make([]string, 0, len(rows))
	for m := range rows {
		macs = append(macs, m)
	}
	sort.Strings(macs)
	var b strings.Builder
	for _, m := range macs {
		fmt.Fprintf(&b, "%s=%d,", m, rows[m])
	}
	return b.String()
}

func parseRows(s string) map[string]uint32 {
	out := map[string]uint32{}
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		var num uint32
		i := strings.IndexByte(f, '=')
		fmt.Sscan(f[i+1:], &num)
		out[f[:i]] = num
	}
	return out
}

func stepTable(st tableState, in input, out output) (bool, tableState) {
	switch in.Kind {
	case opRead:
		return out.Table == st.Rows, st
	case opAdd:
		rows := parseRows(st.Rows)
		_, present := rows[in.MAC]
		switch out.Result {
		case resOK:
			if present || out.Num != st.Next {
				return false, st
			}
		case resRefuse:
			return present, st
		case resUnk:
			// Made or not: not made is the same as linearizing it after
			// everything, which porcupine can do since it never returned.
			// When the final table shows it was made (resolveUnknown), Num
			// is the number it got.
			if present {
				return true, st
			}
			if out.Num != 0 && out.Num != st.Next {
				return false, st
			}
		}
		rows[in.MAC] = st.Next
		return true, tableState{Rows: canonicalRows(rows), Next: st.Next + 1}
	}
	return false, st
}

func stepLL(st bool, in input, out output) (bool, bool) {
	switch in.Kind {
	case opReadLL:
		return out.On == st, st
	case opSetLL:
		if out.Result == resRefuse {
			return true, st // refused: changes nothing (the suite expects none)
		}
		return true, in.On // ok, or unknown and made (not made: linearized last)
	}
	return false, st
}

// model is the sequential specification; firstNum is the number the
// state machine gives next when the history starts.
func model(firstNum uint32) porcupine.Model {
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			var table, ll []porcupine.Operation
			for _, o := range h {
				switch o.Input.(input).Kind {
				case opAdd, opRead:
					table = append(table, o)
				default:
					ll = append(ll, o)
				}
			}
			return [][]porcupine.Operation{table, ll}
		},
		Init: func() any { return initState{firstNum} },
		Step: func(s, in, out any) (bool, any) {
			if is, ok := s.(initState); ok {
				switch in.(input).Kind {
				case opAdd, opRead:
					s = tableState{Next: is.first}
				default:
					s = false
				}
			}
			switch st := s.(type) {
			case tableState:
				return stepTable(st, in.(input), out.(output))
			case bool:
				return stepLL(st, in.(input), out.(output))
			}
			return false, s
		},
		DescribeOperation: func(in, out any) string {
			i, o := in.(input), out.(output)
			switch i.Kind {
			case opAdd:
				return fmt.Sprintf("n%d add(%s) -> %s %d %s", i.Node, i.MAC, o.Result, o.Num, o.Msg)
			case opRead:
				return fmt.Sprintf("n%d read -> %s", i.Node, o.Table)
			case opSetLL:
				return fmt.Sprintf("n%d loadlevel %v -> %s %s", i.Node, i.On, o.Result, o.Msg)
			}
			return fmt.Sprintf("n%d loadlevel? -> %v", i.Node, o.On)
		},
	}
}

// initState is the state before a partition's first step: which object
// the partition is about is known only from its first operation.
type initState struct{ first uint32 }

// neverReturned is the return time of an operation whose outcome the
// client never learned.
const neverReturned = math.MaxInt64
