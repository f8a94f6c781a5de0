package cfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// session is one client node's view of the server: its open files, its
// locks, and what it may hold in its caches (interest).
type session struct {
	srv  *Server
	node uint32
	send sender
	id   uint64 // the server's number for it (replication names handles by it)
	// copies: this is the serving node's replication session on a replica
	// (replica.go); its requests are applied in order, handles translated.
	copies bool
	copied map[[2]uint64]uint64 // on a replica: (session, handle) at the server -> handle here
	sync   *copyState           // on a replica: the full copy in progress

	sendMu sync.Mutex

	mu         sync.Mutex
	handles    map[uint64]*handle
	nextHandle uint64
	// interest are the files (by id) whose attributes, data or directory
	// entries this client may cache: every answer about a file marks it,
	// before the server looks and again before it answers. A change by
	// another node invalidates the file here and clears the mark.
	interest map[uint64]struct{}
	locks    map[lockKey]int // lock descriptors (open file descriptions of their own)
	acks     map[uint64]chan struct{}
	cancels  map[uint64]context.CancelFunc
	ended    bool
	// waiting counts this session's requests waiting for other nodes'
	// acknowledgements: such a node's kernel may hold locks that its own
	// invalidation would wait for, so nobody waits for its ack.
	waiting atomic.Int32

	done    chan struct{}
	endOnce sync.Once
	endErr  error
}

type handle struct {
	fd     int
	id     uint64 // the file's id
	path   string
	flags  int
	copied atomic.Bool // the replica has it open too (replica.go; set under the session's lock, read without)
}

type lockKey struct {
	owner uint64
	file  uint64
	flock bool
}

// end closes the session: its files close and its locks go.
func (x *session) end(err error) {
	x.endOnce.Do(func() {
		x.mu.Lock()
		x.ended = true
		x.endErr = err
		copied := false
		for _, h := range x.handles {
			unix.Close(h.fd)
			copied = copied || h.copied.Load()
		}
		for _, fd := range x.locks {
			unix.Close(fd)
		}
		x.handles, x.locks = map[uint64]*handle{}, map[lockKey]int{}
		for _, c := range x.cancels {
			c()
		}
		x.mu.Unlock()
		x.srv.drop(x)
		close(x.done)
		if copied {
			x.srv.sessionClosed(x.id)
		}
		x.srv.log.Info("cluster filesystem session ended", "client", x.node, "reason", err)
	})
}

func (x *session) deliver(m *ssiv1.FsMessage) error {
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	select {
	case <-x.done:
		return errors.New("session ended")
	default:
	}
	return x.send(m)
}

// mark records that the client may cache what it is told about ids.
func (x *session) mark(ids ...uint64) {
	x.mu.Lock()
	for _, id := range ids {
		if id != 0 {
			x.interest[id] = struct{}{}
		}
	}
	x.mu.Unlock()
}

// take returns which of invals concern x, clearing its interest in them.
func (x *session) take(invals []*ssiv1.FsInval) []*ssiv1.FsInval {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []*ssiv1.FsInval
	for _, iv := range invals {
		key := iv.Ino
		if len(iv.Name) > 0 {
			key = iv.Parent
		}
		if _, ok := x.interest[key]; ok {
			out = append(out, iv)
		}
	}
	for _, iv := range out {
		if len(iv.Name) == 0 {
			delete(x.interest, iv.Ino)
		}
	}
	return out
}

// invalidate tells every other node that caches any of invals to drop it,
// and waits until each has confirmed (or its session is ended).
func (x *session) invalidate(invals []*ssiv1.FsInval) {
	if len(invals) == 0 {
		return
	}
	type wait struct {
		to *session
		ch chan struct{}
	}
	var waits []wait
	for _, o := range x.srv.others(x) {
		mine := o.take(invals)
		if len(mine) == 0 {
			continue
		}
		id := x.srv.invalSeq.Add(1)
		ch := make(chan struct{})
		o.mu.Lock()
		if o.ended {
			o.mu.Unlock()
			continue
		}
		o.acks[id] = ch
		o.mu.Unlock()
		x.srv.log.Debug("cfs invalidation", "from", x.node, "to", o.node, "count", len(mine))
		if err := o.deliver(&ssiv1.FsMessage{InvalId: id, Inval: mine}); err != nil {
			o.end(fmt.Errorf("cannot send an invalidation: %w", err))
			continue
		}
		waits = append(waits, wait{o, ch})
	}
	if len(waits) == 0 {
		return
	}
	x.waiting.Add(1)
	defer x.waiting.Add(-1)
	deadline := time.NewTimer(AckTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, w := range waits {
	wait:
		for {
			select {
			case <-w.ch:
				break wait
			case <-w.to.done:
				break wait
			case <-tick.C:
				if w.to.waiting.Load() > 0 {
					// Both wait for each other's kernel: a deadlock.
					break wait
				}
			case <-deadline.C:
				w.to.end(fmt.Errorf("no acknowledgement of an invalidation within %v", AckTimeout))
				break wait
			}
		}
	}
}

func (x *session) acked(id uint64) {
	x.mu.Lock()
	ch := x.acks[id]
	delete(x.acks, id)
	x.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// handle serves one request; its answer is delivered by the caller.
func (x *session) serve(ctx context.Context, r *ssiv1.FsRequest) *ssiv1.FsMessage {
	if r.Op >= 0 && int(r.Op) < len(x.srv.requests) {
		x.srv.requests[r.Op].Add(1)
	}
	defer x.srv.observe(r.Op, time.Now())
	if x.srv.log.Enabled(ctx, slog.LevelDebug) {
		start := time.Now()
		defer func() {
			x.srv.log.Debug("cfs request", "client", x.node, "op", r.Op, "path", string(r.Path), "took", time.Since(start))
		}()
	}
	var m *ssiv1.FsMessage
	var err error
	switch {
	case x.copies:
		m, err = x.applyCopy(ctx, r)
	case changes(x, r):
		x.srv.changing.RLock()
		if rp := x.srv.repl.Load(); rp != nil {
			m, err = rp.change(ctx, x, r)
		} else {
			m, err = x.do(ctx, r)
		}
		x.srv.changing.RUnlock()
	default:
		m, err = x.do(ctx, r)
	}
	if m == nil {
		m = &ssiv1.FsMessage{}
	}
	m.Id = r.Id
	if err != nil {
		m.Errno = int32(toErrno(err))
	}
	return m
}

func toErrno(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return unix.EINTR
	}
	return unix.EIO
}

// file finds an open handle.
func (x *session) file(id uint64) (*handle, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	h, ok := x.handles[id]
	if !ok {
		return nil, unix.EBADF
	}
	return h, nil
}

func (x *session) addHandle(fd int, id uint64, path string, flags int) uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ended {
		unix.Close(fd)
		return 0
	}
	x.nextHandle++
	x.handles[x.nextHandle] = &handle{fd: fd, id: id, path: path, flags: flags}
	return x.nextHandle
}

func entryInval(parent uint64, name string) *ssiv1.FsInval {
	return &ssiv1.FsInval{Parent: parent, Name: []byte(name)}
}

func inodeInval(id uint64) *ssiv1.FsInval { return &ssiv1.FsInval{Ino: id} }

// parentID is the id of rel's directory.
func (x *session) parentID(rel string) uint64 {
	dir := filepath.Dir(rel)
	if dir == "." {
		dir = ""
	}
	st, err := x.srv.lstat(dir)
	if err != nil {
		return 0
	}
	return x.srv.fileID(st)
}

func baseName(rel string) string {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[i+1:]
	}
	return rel
}
