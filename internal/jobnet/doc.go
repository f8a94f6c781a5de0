// Package jobnet gives a job a network identity of its own that moves with
// it (ssi run --net, docs/JOBNET.md): an address from the cluster's pool
// (assigned by the replicated state, state.AssignNetAddr), and in the job's
// network namespace a macvlan interface on the node's cluster interface
// with the MAC that goes with the address (state.NetMAC). It also holds
// the network plumbing migration needs around CRIU (Lock, Unlock, Detach,
// Announce), the leader's and the node's clean-up of addresses whose job
// is gone, and the fencing of a node's jobs' links while it knows no
// leader (fence.go). It serves JobNet on the control socket (ssi net, ssi net pool).
//
// It must not start, freeze or checkpoint jobs (internal/rexec,
// internal/migrate) nor pick addresses itself (the state machine does).
package jobnet
