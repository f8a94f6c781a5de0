package cvip

import (
	"math"

	"github.com/ssi-cluster/ssi/internal/state"
)

// maxSlots bounds a VIP's slot table: the verdict map that numgen or jhash
// index, one entry per share of new connections.
const maxSlots = 256

// endpoint is one healthy backend with its weight.
type endpoint struct {
	Num    uint32
	Addr   string // IPv4
	Port   uint16 // 0: the client's destination port
	Weight uint32
}

// slots spreads the endpoints over a table of at most maxSlots entries,
// each endpoint getting a share proportional to its weight (at least one),
// in smooth weighted round-robin order (nginx's), so that numgen inc walks
// them interleaved: weights 3,1 give A A B A rather than A A A B. The
// values are indexes into eps.
func slots(eps []endpoint) []int {
	if len(eps) == 0 {
		return nil
	}
	var total uint64
	for _, e := range eps {
		total += uint64(max(e.Weight, 1))
	}
	scale := 1.0
	if total > maxSlots {
		scale = float64(maxSlots) / float64(total)
	}
	w := make([]int, len(eps))
	sum := 0
	for i, e := range eps {
		w[i] = max(1, int(math.Round(float64(max(e.Weight, 1))*scale)))
		sum += w[i]
	}
	for sum > maxSlots { // rounding up of many small weights
		big := 0
		for i := range w {
			if w[i] > w[big] {
				big = i
			}
		}
		w[big]--
		sum--
	}
	cur := make([]int, len(eps))
	out := make([]int, 0, sum)
	for range sum {
		best := 0
		for i := range w {
			cur[i] += w[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= sum
		out = append(out, best)
	}
	return out
}

// weightFor is a backend's weight under the VIP's scheduler: wrr its
// configured weight, load the inverse of its reported load per CPU, lc the
// inverse of its active connections, rr and sh one.
func weightFor(v *state.VIP, num uint32, load float64, ncpu uint32, active int64) uint32 {
	switch v.Sched {
	case state.SchedWRR:
		return v.Weight(num)
	case state.SchedLoad:
		per := load
		if ncpu > 0 {
			per = load / float64(ncpu)
		}
		return clampWeight(100 / (1 + 4*per))
	case state.SchedLC:
		if active < 0 {
			return 1
		}
		return clampWeight(100 / float64(1+active))
	default:
		return 1
	}
}

func clampWeight(f float64) uint32 {
	switch {
	case math.IsNaN(f) || f < 1:
		return 1
	case f > state.MaxWeight:
		return state.MaxWeight
	}
	return uint32(math.Round(f))
}
