package robustness

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// The model itself: histories that must pass and histories that must not,
// so that an Ok verdict of the suite means something.
func TestModelVerdicts(t *testing.T) {
	op := func(c, r int64, in input, out output) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: c, Return: r}
	}
	add := func(mac string) input { return input{Kind: opAdd, MAC: mac} }
	read := input{Kind: opRead}
	rows := func(kv ...any) string {
		m := map[string]uint32{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = uint32(kv[i+1].(int))
		}
		return canonicalRows(m)
	}
	for _, tc := range []struct {
		name string
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"ack then read", []porcupine.Operation{
			op(0, 10, add("a"), output{Result: resOK, Num: 6}),
			op(20, 30, read, output{Table: rows("a", 6)}),
		}, porcupine.Ok},
		{"lost write: an acknowledged add missing from a later read", []porcupine.Operation{
			op(0, 10, add("a"), output{Result: resOK, Num: 6}),
			op(20, 30, read, output{Table: rows()}),
		}, porcupine.Illegal},
		{"stale read after a read that saw the write", []porcupine.Operation{
			op(0, 100, add("a"), output{Result: resUnk}),
			op(10, 20, read, output{Table: rows("a", 6)}),
			op(30, 40, read, output{Table: rows()}),
		}, porcupine.Illegal},
		{"concurrent read may miss it", []porcupine.Operation{
			op(0, 30, add("a"), output{Result: resOK, Num: 6}),
			op(10, 20, read, output{Table: rows()}),
		}, porcupine.Ok},
		{"numbers in commit order", []porcupine.Operation{
			op(0, 10, add("a"), output{Result: resOK, Num: 7}),
			op(0, 10, add("b"), output{Result: resOK, Num: 6}),
		}, porcupine.Ok},
		{"a number given twice", []porcupine.Operation{
			op(0, 10, add("a"), output{Result: resOK, Num: 6}),
			op(20, 30, add("b"), output{Result: resOK, Num: 6}),
		}, porcupine.Illegal},
		{"an unknown outcome that was made takes a number", []porcupine.Operation{
			op(0, neverReturned, add("a"), output{Result: resUnk}),
			op(20, 30, add("b"), output{Result: resOK, Num: 7}),
			op(40, 50, read, output{Table: rows("a", 6, "b", 7)}),
		}, porcupine.Ok},
		{"an unknown outcome that was not made", []porcupine.Operation{
			op(0, neverReturned, add("a"), output{Result: resUnk}),
			op(20, 30, add("b"), output{Result: resOK, Num: 6}),
			op(40, 50, read, output{Table: rows("b", 6)}),
		}, porcupine.Ok},
		{"a first add refused as a duplicate (issue 10)", []porcupine.Operation{
			op(0, 10, add("a"), output{Result: resRefuse}),
		}, porcupine.Illegal},
		{"re-add refused", []porcupine.Operation{
			op(0, 10, add("a"), output{Result: resOK, Num: 6}),
			op(20, 30, add("a"), output{Result: resRefuse}),
		}, porcupine.Ok},
		{"register: read the last write", []porcupine.Operation{
			op(0, 10, input{Kind: opSetLL, On: true}, output{Result: resOK}),
			op(20, 30, input{Kind: opReadLL}, output{On: true}),
		}, porcupine.Ok},
		{"register: stale read", []porcupine.Operation{
			op(0, 10, input{Kind: opSetLL, On: true}, output{Result: resOK}),
			op(20, 30, input{Kind: opReadLL}, output{On: false}),
		}, porcupine.Illegal},
	} {
		if got := porcupine.CheckOperations(model(6), tc.h); (got && tc.want != porcupine.Ok) || (!got && tc.want != porcupine.Illegal) {
			t.Errorf("%s: linearizable = %v, want %s", tc.name, got, tc.want)
		}
	}
}
