package cfs

import (
	"context"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// Lock reclaim (docs/CFS.md "Locks across a failover"). Locks live on the
// server as open file descriptions of its own, so a server that restarts
// or a replica that takes over holds none. Each mount remembers the lock
// requests its processes made and that were granted, and makes them again
// (flagged lkReclaim) on its next session; a server that starts serving
// holds every other lock request for a grace period, so that the holders
// get their locks back first, and refuses reclaims after it.

// lkReclaim in a lock request's flags: a lock this node held before the
// server changed.
const lkReclaim = 2

// maxHeld bounds the lock requests a mount remembers per file (a program
// that locks ever new ranges without unlocking the whole file).
const maxHeld = 4096

// grace is how long a server that starts serving holds new locks back.
func grace(failure time.Duration) time.Duration { return max(2*time.Second, 2*failure+time.Second) }

// setGrace holds lock requests that are not reclaims for d.
func (s *Server) setGrace(d time.Duration) { s.graceUntil.Store(time.Now().Add(d).UnixNano()) }

// waitGrace waits until the grace period ends for a request that takes a
// lock and is not a reclaim.
//
// A reclaim outside a grace period is refused (ENOLCK): the server did not
// just start, so the lock was released while this node was away (the
// cluster recorded it DOWN, or its session broke) and may be another's now.
func (x *session) waitGrace(ctx context.Context, r *ssiv1.FsRequest) error {
	if r.Op == ssiv1.FsOp_FS_OP_GETLK || r.Lock.GetType() == unix.F_UNLCK {
		return nil
	}
	left := time.Until(time.Unix(0, x.srv.graceUntil.Load()))
	if r.Flags&lkReclaim != 0 {
		if left <= 0 {
			return unix.ENOLCK
		}
		return nil
	}
	if left <= 0 {
		return nil
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return unix.EINTR
	case <-x.done:
		return unix.EIO
	}
}

// held records a granted lock request (an unlock of the whole file drops
// what the owner held on it).
func (n *node) held(r *ssiv1.FsRequest) {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	lk := r.Lock
	flock := r.Flags&lkFlock != 0
	if lk.GetType() == unix.F_UNLCK && (flock || (lk.Start == 0 && lk.End >= 1<<63-1)) {
		kept := n.locks[:0]
		for _, o := range n.locks {
			if o.Owner != r.Owner || (o.Flags&lkFlock != 0) != flock {
				kept = append(kept, o)
			}
		}
		n.locks = kept
		return
	}
	if len(n.locks) >= maxHeld {
		n.c.log.Warn("too many lock requests on one file to remember; the oldest is forgotten and will not be reclaimed after a failover", "path", n.path())
		n.locks = n.locks[1:]
	}
	n.locks = append(n.locks, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SETLK, Owner: r.Owner, Lock: lk, Flags: r.Flags &^ lkReclaim})
}

// reclaim takes again, on a new session, every lock this mount's
// processes held, through one of each file's open files.
func (cl *Client) reclaim(ctx context.Context) {
	cl.mu.Lock()
	var ns []*node
	for _, in := range cl.inodes {
		if n, ok := in.Operations().(*node); ok {
			ns = append(ns, n)
		}
	}
	cl.mu.Unlock()
	for _, n := range ns {
		n.lmu.Lock()
		reqs := append([]*ssiv1.FsRequest(nil), n.locks...)
		var f *file
		for o := range n.files {
			f = o
			break
		}
		n.lmu.Unlock()
		if len(reqs) == 0 || f == nil {
			continue
		}
		lost := 0
		for _, q := range reqs {
			r := &ssiv1.FsRequest{Op: q.Op, Owner: q.Owner, Lock: q.Lock, Flags: q.Flags | lkReclaim}
			if _, errno := f.call(ctx, r); errno != 0 {
				lost++
				cl.log.Warn("a lock held before the cluster filesystem's server changed could not be taken again", "path", n.path(), "owner", q.Owner, "err", syscall.Errno(errno))
			}
		}
		if lost == 0 {
			cl.log.Info("locks taken again on the new server", "path", n.path(), "requests", len(reqs))
		}
	}
}
