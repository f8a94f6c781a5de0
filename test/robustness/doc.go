// Package robustness is the cluster's robustness suite, in the spirit of
// etcd's: a real five-node cluster of separate `ssi daemon` processes,
// each in network namespaces of its own (`ssi up --isolate`), driven by
// concurrent writers and readers through the real CLI while faults are
// injected (kill -9 of random nodes, the leader and node 1; all nodes at
// once; SIGSTOP/SIGCONT; a node cut off; a minority partition; one-way
// drops). Every operation is recorded with its call and return times and
// its outcome (ok, refused, unknown), and the history is checked for
// linearizability with github.com/anishathalye/porcupine; then that no
// acknowledged write was lost, that every node converged on the same
// table, and that no client hung.
//
// The code is all in _test files: `go test ./test/robustness/` runs a
// short pass (make test); ROBUSTNESS_DURATION=10m ROBUSTNESS_LOAD=1
// (make robustness) a long one under a CPU-saturating load, which also
// counts false DOWNs. docs/RELIABILITY.md has the figures.
package robustness
