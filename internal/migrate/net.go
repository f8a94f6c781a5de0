package migrate

// The migration of a job with a network of its own (ssi run --net,
// internal/jobnet, docs/JOBNET.md): its namespace moves with it through
// CRIU, TCP connections included, while its network is kept quiet.

import (
	"errors"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"
	"github.com/checkpoint-restore/go-criu/v8/rpc"

	"github.com/ssi-cluster/ssi/internal/jobnet"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// JobNets is what migration needs of internal/jobnet.
type JobNets interface {
	// AddrOf is the address job cpid holds, if any.
	AddrOf(cpid vproc.CPID) (state.NetAddr, bool)
	// Adopted is the network of a job that moved here, released when it
	// ends here (procs.AdoptRequest.Net).
	Adopted(cpid vproc.CPID) procs.JobNet
	// Link is this node's cluster interface, where the jobs' macvlans go.
	Link() (string, error)
}

// jobNet is a --net job's network around one checkpoint or restore on
// this node: the job's init (host PID), its address, this node's link.
type jobNet struct {
	pid    int
	addr   state.NetAddr
	link   string
	locked bool
	log    *slog.Logger
}

// netOf is the network of job cpid (init: its host PID here), or nil when
// it has none; an error when it has one this node cannot handle.
func (m *Migrator) netOf(cpid vproc.CPID, init int) (*jobNet, error) {
	if m.cfg.JobNet == nil {
		return nil, nil
	}
	a, ok := m.cfg.JobNet.AddrOf(cpid)
	if !ok {
		return nil, nil
	}
	link, err := m.cfg.JobNet.Link()
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: process %d has the address %s: %w", m.cfg.Self, cpid, a.IP, err))
	}
	return &jobNet{pid: init, addr: a, link: link, log: m.log}, nil
}

// lock keeps the job's network quiet from now until undo or until the
// copy here ends (jobnet.Lock).
func (n *jobNet) lock() error {
	if n == nil {
		return nil
	}
	if err := jobnet.Lock(n.pid); err != nil {
		return fmt.Errorf("address %s: %w", n.addr.IP, err)
	}
	n.locked = true
	return nil
}

// undo lets the job's network go on where it is (the move failed): the
// lock goes, and the switch learns again that the MAC is here (the target
// may have announced it meanwhile).
func (n *jobNet) undo() {
	if n == nil || !n.locked {
		return
	}
	if err := jobnet.Unlock(n.pid); err != nil {
		n.log.Error("the migration failed and the job's network could not be unlocked", "ip", n.addr.IP, "err", err)
		return
	}
	n.locked = false
	if err := jobnet.Announce(n.pid, n.addr.IP); err != nil {
		n.log.Warn("announcing a job's address after a failed migration", "ip", n.addr.IP, "err", err)
	}
}

// leave takes the address away from the copy of the job here, before it
// is killed: once the copy elsewhere is the job, nothing here may answer
// for it (the lock stays until the namespace ends with the copy).
func (n *jobNet) leave() {
	if n == nil {
		return
	}
	if err := jobnet.Detach(n.pid); err != nil {
		n.log.Warn("removing the address from a job's old copy", "ip", n.addr.IP, "err", err)
	}
}

// arrive lets the restored copy (unlocked: the lock came with the
// checkpoint) use the network here, and tells the switch.
func (n *jobNet) arrive() error {
	if n == nil {
		return nil
	}
	if err := jobnet.Unlock(n.pid); err != nil {
		return fmt.Errorf("address %s: %w", n.addr.IP, err)
	}
	if err := jobnet.Announce(n.pid, n.addr.IP); err != nil {
		n.log.Warn("announcing a job's address after its move", "ip", n.addr.IP, "err", err)
	}
	return nil
}

// criuOpts are CRIU's options for a job with its own network, dump or
// restore alike: the established TCP connections go with it (CRIU's TCP
// repair), and the job's macvlan is external: at restore CRIU makes it
// anew on this node's cluster interface (its MAC and address come from
// the images). The network lock is ours (jobnet.Lock): CRIU's would be
// lifted at the end of a dump that leaves the job running.
func (n *jobNet) criuOpts(opts *rpc.CriuOpts) {
	if n == nil {
		return
	}
	opts.TcpEstablished = ptr(true)
	opts.External = append(opts.External, "macvlan["+jobnet.Iface+"]:"+n.link)
}

// adoptedNet is the network of job cpid arriving here (nil: none).
func (m *Migrator) adoptedNet(cpid vproc.CPID) procs.JobNet {
	if m.cfg.JobNet == nil {
		return nil
	}
	return m.cfg.JobNet.Adopted(cpid)
}

// errNetCheckpoint: checkpoint/restart does not take a job's address along
// (yet): its restart would need the address back.
var errNetCheckpoint = errors.New("it has a network address of its own (--net): checkpoint/restart of such jobs is not done yet (docs/JOBNET.md); migrate moves it")

// refuseNetCheckpoint refuses to checkpoint a --net job.
func (m *Migrator) refuseNetCheckpoint(cpid vproc.CPID) error {
	if m.cfg.JobNet == nil {
		return nil
	}
	if _, ok := m.cfg.JobNet.AddrOf(cpid); ok {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: process %d: %w", m.cfg.Self, cpid, errNetCheckpoint))
	}
	return nil
}
