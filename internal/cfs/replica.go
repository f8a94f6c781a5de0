package cfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Replication (docs/CFS.md "Replica and failover"). The serving node opens
// a session of its own with the replica (HELLO flag helloCopies) and sends
// it every change, in the order it made them, before it answers the client
// that asked: a change is acknowledged only once the replica has made it
// too (and fsync'd it, for an FSYNC). The replica makes each change with
// the same code that serves clients, one at a time, translating the
// server's handles to its own, and records which id clients know each of
// its files by (alias), so that after a takeover the files keep their
// identities. A replica that falls behind (its session broke, a change
// failed there) is first recorded out of sync in the cluster state — only
// then is the next change acknowledged — and is brought back by a full
// copy (SYNC_*) during which changes wait.

// helloCopies in a HELLO's flags: the serving node's replication session.
const helloCopies = 1

// The roles of a Server.
const (
	roleServe   int32 = iota // serves clients (the default)
	roleReplica              // takes the serving node's copies, serves nobody else
	roleIdle                 // neither: the cluster moved the service elsewhere
)

// admits says whether a session may start in the server's current role.
func (s *Server) admits(node uint32, copies bool) error {
	switch s.role.Load() {
	case roleServe:
		if copies {
			return fmt.Errorf("node %d wants to copy its changes to this node, which serves the cluster filesystem itself", node)
		}
	case roleReplica:
		if !copies {
			return fmt.Errorf("this node is the cluster filesystem's replica; node %d serves it", s.primary.Load())
		}
		if node != s.primary.Load() {
			return fmt.Errorf("node %d does not serve the cluster filesystem (node %d does) and cannot copy to its replica", node, s.primary.Load())
		}
	default:
		return errors.New("this node does not serve the cluster filesystem")
	}
	return nil
}

// setRole changes what the server does; sessions the new role does not
// admit end. gen is the record's count of takeovers: a server that starts
// serving a copy numbers its own new files with it.
func (s *Server) setRole(role int32, primary uint32, gen uint64) {
	old := s.role.Swap(role)
	s.primary.Store(primary)
	if role == roleServe && old != roleServe && s.graceFor > 0 {
		s.setGrace(s.graceFor)
	}
	if role == roleServe && (old != roleServe || s.ownGen.Load() == 0) {
		s.aliasMu.RLock()
		copied := len(s.alias) > 0
		s.aliasMu.RUnlock()
		if copied {
			// Serving a copy (a takeover, or a restart after one): the
			// files keep the ids clients know them by, also after this
			// daemon restarts.
			s.ownGen.Store(max(gen, 1))
			if err := s.saveIDs(); err != nil {
				s.log.Error("the served copy's file ids are not kept; after a restart of this daemon its files get new ids", "err", err)
			}
		}
	}
	if role == old && role != roleReplica {
		return
	}
	s.mu.Lock()
	var end []*session
	for x := range s.sessions {
		if s.admits(x.node, x.copies) != nil {
			end = append(end, x)
		}
	}
	s.mu.Unlock()
	for _, x := range end {
		x.end(errors.New("the cluster filesystem's server changed"))
	}
}

func (s *Server) aliasOf(ino uint64) (uint64, bool) {
	s.aliasMu.RLock()
	defer s.aliasMu.RUnlock()
	id, ok := s.alias[ino]
	return id, ok
}

func (s *Server) setAlias(ino, id uint64) {
	s.aliasMu.Lock()
	if s.alias == nil {
		s.alias = map[uint64]uint64{}
	}
	s.alias[ino] = id
	s.aliasMu.Unlock()
}

// gone forgets the alias of a file whose last name went (its inode number
// may be reused).
func (s *Server) gone(st *unix.Stat_t) {
	if st.Dev != s.rootDev || (st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR) {
		return
	}
	s.aliasMu.Lock()
	_, had := s.alias[st.Ino]
	delete(s.alias, st.Ino)
	s.aliasMu.Unlock()
	if had {
		s.keptGone(st.Ino)
	}
}

// sessionClosed tells the replica that a session's files closed.
func (s *Server) sessionClosed(id uint64) {
	if rp := s.repl.Load(); rp != nil {
		go rp.closeSession(id)
	}
}

// changes says whether a request changes the export (and so is copied to
// the replica before it is answered).
func changes(x *session, r *ssiv1.FsRequest) bool {
	switch r.Op {
	case ssiv1.FsOp_FS_OP_SETATTR, ssiv1.FsOp_FS_OP_CREATE, ssiv1.FsOp_FS_OP_WRITE, ssiv1.FsOp_FS_OP_FSYNC,
		ssiv1.FsOp_FS_OP_ALLOCATE, ssiv1.FsOp_FS_OP_MKDIR, ssiv1.FsOp_FS_OP_MKNOD, ssiv1.FsOp_FS_OP_SYMLINK,
		ssiv1.FsOp_FS_OP_LINK, ssiv1.FsOp_FS_OP_UNLINK, ssiv1.FsOp_FS_OP_RMDIR, ssiv1.FsOp_FS_OP_RENAME,
		ssiv1.FsOp_FS_OP_SETXATTR, ssiv1.FsOp_FS_OP_REMOVEXATTR:
		return true
	case ssiv1.FsOp_FS_OP_OPEN:
		return writable(int(r.Flags))
	case ssiv1.FsOp_FS_OP_RELEASE:
		h, err := x.file(r.Handle)
		return err == nil && h.copied.Load()
	}
	return false
}

func writable(flags int) bool {
	return flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
}

// copyOf is the request the replica gets for a change the server made
// (nil: nothing to copy).
func (x *session) copyOf(r *ssiv1.FsRequest, m *ssiv1.FsMessage) *ssiv1.FsRequest {
	c := &ssiv1.FsRequest{
		Op: r.Op, Path: r.Path, Path2: r.Path2, Name: r.Name, Handle: r.Handle, Offset: r.Offset, Size: r.Size, Data: r.Data,
		Flags: r.Flags, Mode: r.Mode, Uid: r.Uid, Gid: r.Gid, Set: r.Set, Rdev: r.Rdev, Session: x.id,
	}
	switch r.Op {
	case ssiv1.FsOp_FS_OP_OPEN, ssiv1.FsOp_FS_OP_CREATE:
		c.Handle, c.Ino = m.Handle, m.GetAttr().GetIno()
		c.Flags &^= unix.O_EXCL // the server made it; the replica does as it did
		if r.Op == ssiv1.FsOp_FS_OP_CREATE && !writable(int(r.Flags)) {
			c.Flags |= unix.O_RDWR // a handle the replica may write through
		}
	case ssiv1.FsOp_FS_OP_MKDIR, ssiv1.FsOp_FS_OP_MKNOD, ssiv1.FsOp_FS_OP_SYMLINK:
		c.Ino = m.GetAttr().GetIno()
	case ssiv1.FsOp_FS_OP_WRITE, ssiv1.FsOp_FS_OP_ALLOCATE, ssiv1.FsOp_FS_OP_FSYNC, ssiv1.FsOp_FS_OP_SETATTR:
		if r.Handle == 0 {
			break
		}
		h, err := x.file(r.Handle)
		if err != nil || !h.copied.Load() {
			if r.Op == ssiv1.FsOp_FS_OP_WRITE || r.Op == ssiv1.FsOp_FS_OP_ALLOCATE {
				return nil // a file the replica could not open (it was unlinked): nothing to copy to
			}
			c.Handle = 0 // by its path
			if r.Op == ssiv1.FsOp_FS_OP_FSYNC {
				c.Path = []byte(x.srv.pathOf(h))
			}
		}
		if r.Op == ssiv1.FsOp_FS_OP_WRITE {
			c.Data = r.Data[:m.Count]
		}
	}
	return c
}

// pathOf is where an open file is now, relative to the export.
func (s *Server) pathOf(h *handle) string {
	if h == nil {
		return ""
	}
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(h.fd))
	if err != nil || strings.HasSuffix(p, " (deleted)") {
		return h.path
	}
	rel, err := filepath.Rel(s.root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return h.path
	}
	if rel == "." {
		return ""
	}
	return rel
}

// replicator is the serving node's side: the session with the replica.
type replicator struct {
	srv    *Server
	to     uint32
	self   uint32
	dial   func(ctx context.Context, deliver func(*ssiv1.FsMessage)) (link, error)
	record func() state.CFS                          // the cluster's record as this node last applied it
	apply  func(context.Context, state.SetCFS) error // a change of the record, through the leader
	log    *slog.Logger

	// mu orders the changes and their copies: held from a change's start
	// until its copy is sent, and for a whole full copy.
	mu     sync.Mutex
	link   link   // written holding mu and pmu
	active bool   // the replica is in sync: changes are copied
	gen    uint64 // counts the times it became active
	out    bool   // this server recorded the replica out of sync since

	pmu     sync.Mutex
	pending map[uint64]chan *ssiv1.FsMessage
	nextID  uint64
}

// change makes a change and copies it to the replica before answering.
func (rp *replicator) change(ctx context.Context, x *session, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	x.waiting.Add(1) // waiting for another node's change, as for its kernel (session.invalidate)
	rp.mu.Lock()
	x.waiting.Add(-1)
	if !rp.active {
		err := rp.outOfSync(ctx)
		var m *ssiv1.FsMessage
		if err == nil {
			m, err = x.do(ctx, r)
		} else {
			rp.log.Error("a change is refused: the replica is behind and the cluster state cannot be told", "replica", rp.to, "err", err)
			err = unix.EIO
		}
		rp.mu.Unlock()
		return m, err
	}
	var m *ssiv1.FsMessage
	var err error
	var wait <-chan *ssiv1.FsMessage
	diverged := false
	if c := x.copyOf(r, &ssiv1.FsMessage{Count: uint32(len(r.Data))}); r.Op == ssiv1.FsOp_FS_OP_WRITE && c != nil {
		// A write goes to the replica first and is made here while the
		// replica makes it: the two disks work at once. Should it fail
		// here, the replica is behind no more but ahead: out of sync all
		// the same.
		wait = rp.sendLocked(c)
		m, err = x.do(ctx, r)
		diverged = err != nil || m == nil || int(m.Count) != len(r.Data)
	} else {
		m, err = x.do(ctx, r)
		if err == nil {
			if c := x.copyOf(r, m); c != nil {
				wait = rp.sendLocked(c)
				if (r.Op == ssiv1.FsOp_FS_OP_OPEN || r.Op == ssiv1.FsOp_FS_OP_CREATE) && m != nil {
					x.setCopied(m.Handle)
				}
			}
		}
	}
	gen := rp.gen
	rp.mu.Unlock()
	if wait == nil {
		return m, err
	}
	a, ok := <-wait
	if ok && a.Errno == 0 && !diverged {
		return m, err
	}
	reason := "its session ended"
	switch {
	case diverged:
		reason = fmt.Sprintf("the server's own write failed (%v) after the replica's", err)
	case ok:
		reason = fmt.Sprintf("it failed to make a %v: %v", r.Op, unix.Errno(a.Errno))
	}
	if lerr := rp.lost(ctx, gen, reason); lerr != nil {
		return nil, unix.EIO
	}
	return m, err
}

func (x *session) setCopied(h uint64) {
	x.mu.Lock()
	if hd, ok := x.handles[h]; ok {
		hd.copied.Store(true)
	}
	x.mu.Unlock()
}

// lost stops copying to the replica of generation gen and records it out
// of sync; only then may changes it did not take be acknowledged.
func (rp *replicator) lost(ctx context.Context, gen uint64, reason string) error {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.active && rp.gen == gen {
		rp.active = false
		rp.log.Warn("the cluster filesystem's replica is behind; recording it out of sync and copying everything again once it is back", "replica", rp.to, "reason", reason)
		if rp.link != nil {
			rp.link.close()
		}
	}
	return rp.outOfSync(ctx)
}

// outOfSync makes sure the cluster does not count on the replica. Called
// with mu held.
func (rp *replicator) outOfSync(ctx context.Context) error {
	rec := rp.record()
	if rec.Server != rp.self {
		return fmt.Errorf("node %d serves the cluster filesystem now", rec.Server)
	}
	if rp.out || rec.Replica != rp.to || !rec.Synced {
		return nil
	}
	next := rec
	next.Synced = false
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := rp.apply(ctx, state.SetCFS{CFS: next, Expect: &rec, Reason: "the replica is behind", Time: time.Now()}); err != nil {
		return err
	}
	rp.out = true
	return nil
}

// sendLocked sends a copy; the channel yields its answer, or closes if the
// session ends first. Called with mu held (the order of sends is the order
// of changes).
func (rp *replicator) sendLocked(c *ssiv1.FsRequest) <-chan *ssiv1.FsMessage {
	ch := make(chan *ssiv1.FsMessage, 1)
	rp.pmu.Lock()
	l := rp.link
	if l == nil {
		rp.pmu.Unlock()
		close(ch)
		return ch
	}
	rp.nextID++
	c.Id = rp.nextID
	rp.pending[c.Id] = ch
	rp.pmu.Unlock()
	if err := l.send(c); err != nil {
		rp.pmu.Lock()
		if _, ok := rp.pending[c.Id]; ok {
			delete(rp.pending, c.Id)
			close(ch)
		}
		rp.pmu.Unlock()
	}
	return ch
}

func (rp *replicator) deliver(m *ssiv1.FsMessage) {
	rp.pmu.Lock()
	ch := rp.pending[m.Id]
	delete(rp.pending, m.Id)
	rp.pmu.Unlock()
	if ch != nil {
		ch <- m
	}
}

// failPending closes every waiting answer (the session ended).
func (rp *replicator) failPending() {
	rp.pmu.Lock()
	p := rp.pending
	rp.pending = map[uint64]chan *ssiv1.FsMessage{}
	rp.pmu.Unlock()
	for _, ch := range p {
		close(ch)
	}
}

// roundTrip sends one request of the full copy and waits for its answer.
// Called with mu held.
func (rp *replicator) roundTrip(c *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	a, ok := <-rp.sendLocked(c)
	if !ok {
		return nil, errors.New("the replica's session ended")
	}
	if a.Errno != 0 {
		return a, fmt.Errorf("%v %q on the replica: %w", c.Op, c.Path, unix.Errno(a.Errno))
	}
	return a, nil
}

func (rp *replicator) closeSession(id uint64) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.active {
		_ = rp.sendLocked(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_CLOSE_SESSION, Session: id})
	}
}

// run keeps the replica in sync until ctx ends: connect, copy everything,
// record it in sync, copy every change; again when the session ends.
func (rp *replicator) run(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		l, err := rp.dial(ctx, rp.deliver)
		if err == nil {
			err = rp.start(ctx, l)
			if err != nil {
				l.close()
			}
		}
		if err != nil {
			rp.log.Info("cluster filesystem replica not in sync yet", "replica", rp.to, "err", err)
			rp.failPending()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		select {
		case <-ctx.Done():
		case <-l.done():
		}
		rp.mu.Lock()
		gen := rp.gen
		rp.mu.Unlock()
		rp.failPending()
		if ctx.Err() == nil {
			_ = rp.lost(ctx, gen, "its session ended")
		}
		l.close()
	}
	rp.mu.Lock()
	rp.active = false
	rp.pmu.Lock()
	rp.link = nil // written under both locks, read under either
	rp.pmu.Unlock()
	rp.mu.Unlock()
}

// start makes the replica a full copy and records it in sync; changes wait
// meanwhile.
func (rp *replicator) start(ctx context.Context, l link) error {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.pmu.Lock()
	rp.link = l
	rp.pmu.Unlock()
	if err := rp.outOfSync(ctx); err != nil {
		return err
	}
	began := time.Now()
	n, bytes, err := rp.fullCopy(ctx)
	if err != nil {
		return fmt.Errorf("copy the export to node %d: %w", rp.to, err)
	}
	rec := rp.record()
	if rec.Server != rp.self || rec.Replica != rp.to {
		return fmt.Errorf("the cluster filesystem's record changed (server %d, replica %d)", rec.Server, rec.Replica)
	}
	// The record as outOfSync left it (this node's view may lag).
	was := state.CFS{Server: rp.self, Replica: rp.to, Failovers: rec.Failovers}
	next := was
	next.Synced = true
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rp.apply(actx, state.SetCFS{CFS: next, Expect: &was, Reason: "the replica has a full copy", Time: time.Now()}); err != nil {
		return fmt.Errorf("record the replica in sync: %w", err)
	}
	rp.active, rp.out = true, false
	rp.gen++
	rp.log.Info("cluster filesystem replica in sync", "replica", rp.to, "files", n, "bytes_copied", bytes, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// The replica's side.

// applyCopy makes one change the server sent, in the order it sent them.
func (x *session) applyCopy(ctx context.Context, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	rel, err := x.srv.clean(string(r.Path))
	if err != nil {
		return nil, err
	}
	if x.copied == nil {
		x.copied = map[[2]uint64]uint64{}
	}
	key := [2]uint64{r.Session, r.Handle}
	switch r.Op {
	case ssiv1.FsOp_FS_OP_SYNC_BEGIN:
		for k, h := range x.copied {
			x.release(h)
			delete(x.copied, k)
		}
		x.srv.aliasMu.Lock()
		x.srv.alias = map[uint64]uint64{}
		x.srv.aliasMu.Unlock()
		x.srv.forgetIDs()
		x.endCopy()
		x.sync = &copyState{seen: map[string]bool{}, byID: map[uint64]string{}, fd: -1}
		return nil, nil
	case ssiv1.FsOp_FS_OP_SYNC_PUT:
		return x.syncPut(rel, r)
	case ssiv1.FsOp_FS_OP_SYNC_DATA:
		return nil, x.syncData(rel, r)
	case ssiv1.FsOp_FS_OP_SYNC_XATTR:
		return x.xattr(rel, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SETXATTR, Name: r.Name, Data: r.Data})
	case ssiv1.FsOp_FS_OP_SYNC_END:
		return nil, x.syncEnd()
	case ssiv1.FsOp_FS_OP_CLOSE_SESSION:
		for k, h := range x.copied {
			if k[0] == r.Session {
				x.release(h)
				delete(x.copied, k)
			}
		}
		return nil, nil
	case ssiv1.FsOp_FS_OP_OPEN, ssiv1.FsOp_FS_OP_CREATE:
		r.Handle = 0
	case ssiv1.FsOp_FS_OP_WRITE, ssiv1.FsOp_FS_OP_ALLOCATE, ssiv1.FsOp_FS_OP_RELEASE:
		h, ok := x.copied[key]
		if !ok {
			return nil, unix.EBADF
		}
		r.Handle = h
	case ssiv1.FsOp_FS_OP_SETATTR, ssiv1.FsOp_FS_OP_FSYNC:
		if r.Handle != 0 {
			r.Handle = x.copied[key] // 0 (by path) if it was not copied
		}
		if r.Op == ssiv1.FsOp_FS_OP_FSYNC && r.Handle == 0 {
			fd, err := x.srv.openAt(rel, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
			if err != nil {
				return nil, err
			}
			defer unix.Close(fd)
			return nil, unix.Fsync(fd)
		}
	}
	m, err := x.do(ctx, r)
	if err != nil {
		return m, err
	}
	switch r.Op {
	case ssiv1.FsOp_FS_OP_OPEN, ssiv1.FsOp_FS_OP_CREATE:
		x.copied[key] = m.Handle
	case ssiv1.FsOp_FS_OP_RELEASE:
		delete(x.copied, key)
	}
	switch r.Op {
	case ssiv1.FsOp_FS_OP_CREATE, ssiv1.FsOp_FS_OP_MKDIR, ssiv1.FsOp_FS_OP_MKNOD, ssiv1.FsOp_FS_OP_SYMLINK:
		if st, err := x.srv.lstat(rel); err == nil && r.Ino != 0 {
			x.srv.setAlias(st.Ino, r.Ino)
		}
	}
	return m, nil
}
