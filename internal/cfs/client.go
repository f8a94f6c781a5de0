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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/mountinfo"
	"github.com/ssi-cluster/ssi/internal/peer"
)

// Kernel cache lifetimes. Changes made through the cluster filesystem reach
// caching nodes as invalidations at once; these bound how long a change
// of attributes or names made to the export behind ssi's back (directly on
// the serving node's disk) can stay unseen.
const (
	attrTimeout  = 5 * time.Second
	entryTimeout = 5 * time.Second
)

// ClientConfig configures a Client.
type ClientConfig struct {
	Self   uint32 // this node's number ({nodenum} in CDSLs)
	Name   string // this node's name ({nodename})
	Mount  string // where to mount
	Server uint32 // the node that serves
	Net    peer.Net
	Local  *Server // the server, when it runs in this process
	// Target, when set, names the serving node (and its Server when it is
	// this process's) at each connection, instead of Server and Local: the
	// cluster may move the service (failover).
	Target func() (uint32, *Server)
	// Failure is the failure-detection time: how long an access waits for a
	// lost server before EIO (read when needed: the cluster may change it).
	Failure  func() time.Duration
	Log      *slog.Logger
	ReadOnly bool
	// CacheTimeout is how long the kernel keeps attributes and names
	// (0: attrTimeout and entryTimeout).
	CacheTimeout time.Duration
}

// Client is one node's mount of the cluster filesystem.
type Client struct {
	c      ClientConfig
	log    *slog.Logger
	nextID atomic.Uint64

	mu      sync.Mutex
	link    link
	epoch   uint64
	ready   chan struct{} // closed while a session is up
	ended   chan struct{} // closed when the session that is up ends
	pending map[uint64]chan *ssiv1.FsMessage
	inodes  map[uint64]*fs.Inode
	meta    *metaCache    // what the mount knows beyond the kernel: attributes, directories' names, missing xattrs (metacache.go)
	heard   atomic.Int64  // unix nanoseconds of the last message from the server
	rootID  atomic.Uint64 // the server's id of the export's root

	fuse *fuse.Server
	root *node
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// Mount mounts the cluster filesystem and keeps its session to the server
// up until Close.
func Mount(ctx context.Context, c ClientConfig) (*Client, error) {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Failure == nil {
		c.Failure = func() time.Duration { return 5 * time.Second }
	}
	cl := &Client{c: c, log: c.Log.With("cfs", c.Mount), ready: make(chan struct{}), pending: map[uint64]chan *ssiv1.FsMessage{}, inodes: map[uint64]*fs.Inode{}}
	cl.meta = newMetaCache(min(attrTimeout, entryTimeout), cl.nodeID)
	// A mount left by a daemon that was killed answers ENOTCONN: take it
	// away first. A live one belongs to another daemon on this machine.
	// (STATFS always reaches the filesystem: a cached attribute cannot hide
	// a dead one.)
	if isOurMount(c.Mount) {
		var sfs unix.Statfs_t
		if err := unix.Statfs(c.Mount, &sfs); err == nil {
			return nil, fmt.Errorf("%s is already a mounted cluster filesystem (another ssi daemon on this machine?); give this node another --cfs-mount", c.Mount)
		}
		if err := unix.Unmount(c.Mount, unix.MNT_DETACH); err != nil {
			return nil, fmt.Errorf("take away the dead cluster filesystem mount at %s: %w", c.Mount, err)
		}
	} else if _, err := os.Stat(c.Mount); errors.Is(err, syscall.ENOTCONN) {
		_ = unix.Unmount(c.Mount, unix.MNT_DETACH)
	}
	if err := os.MkdirAll(c.Mount, 0o755); err != nil {
		return nil, fmt.Errorf("cluster filesystem mount point %s: %w", c.Mount, err)
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	cl.stop = stop
	cl.wg.Add(1)
	go func() { defer cl.wg.Done(); cl.run(lctx) }()

	// The root's identity comes from the server; wait for the first session
	// a failure-detection time, then mount anyway (accesses fail with EIO
	// until the server is reachable).
	rootIno := uint64(1)
	wctx, cancel := context.WithTimeout(ctx, c.Failure())
	if m, errno := cl.call(wctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_GETATTR}); errno == 0 && m.Attr != nil {
		rootIno = m.Attr.Ino
		cl.rootID.Store(rootIno)
	}
	cancel()
	root := &node{c: cl}
	sec, esec := attrTimeout, entryTimeout
	if c.CacheTimeout > 0 {
		sec, esec = c.CacheTimeout, c.CacheTimeout
	}
	cl.meta.ttl = min(sec, esec)
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:  true,
			FsName:      "ssi-cfs",
			Name:        "cfs",
			DirectMount: true,
			// Never fall back to fusermount: that would fork under
			// mountNoInherit's lock.
			DirectMountStrict: true,
			MaxWrite:          maxIO,
			MaxReadAhead:      maxIO,
			EnableLocks:       true,
			// The kernel checks permissions as the calling user, from the
			// attributes the server gives: never as the daemon's root.
			Options:       []string{"default_permissions"},
			MaxBackground: 64,
			// The server invalidates what another node changed; the
			// kernel must not drop a file's pages itself because its
			// mtime moved (as after this node's own writes).
			ExplicitDataCacheControl: true,
		},
		EntryTimeout:    &esec,
		AttrTimeout:     &sec,
		NegativeTimeout: &esec,
		RootStableAttr:  &fs.StableAttr{Ino: rootIno},
		NullPermissions: true,
		// The kernel's node numbers are the server's file ids: a file
		// looked up twice is one node, and an invalidation names it
		// without a table that could miss (see nodeID).
		ExternalNodeID: true,
	}
	if c.ReadOnly {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro")
	}
	srv, err := mountNoInherit(c.Mount, root, opts)
	if err != nil {
		stop()
		cl.wg.Wait()
		return nil, fmt.Errorf("mount the cluster filesystem at %s: %w", c.Mount, err)
	}
	cl.setReadahead()
	cl.mu.Lock()
	cl.fuse = srv
	cl.root = root
	cl.inodes[rootIno] = root.EmbeddedInode()
	cl.mu.Unlock()
	go cl.learnRoot(lctx)
	return cl, nil
}

// mountNoInherit mounts with no job able to inherit the /dev/fuse
// descriptor: go-fuse opens it without O_CLOEXEC, and a job holding it
// would keep the mount's connection alive after the daemon died, so that
// the job's own exit (which flushes its open files) waited forever for an
// answer nobody can give. Forks wait (syscall.ForkLock) until the
// descriptor is marked close-on-exec.
func mountNoInherit(dir string, root fs.InodeEmbedder, opts *fs.Options) (*fuse.Server, error) {
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	srv, err := fs.Mount(dir, root, opts)
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if t, _ := os.Readlink("/proc/self/fd/" + e.Name()); t == "/dev/fuse" {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				syscall.CloseOnExec(fd)
			}
		}
	}
	return srv, err
}

// readaheadKB is the kernel's readahead on the mount: the kernel starts
// FUSE mounts at 128 KiB, which leaves a sequential reader waiting for one
// round trip to the server per 128 KiB (docs/PERFORMANCE.md).
const readaheadKB = 4096

func (cl *Client) setReadahead() {
	var st unix.Stat_t
	if err := unix.Stat(cl.c.Mount, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(strconv.Itoa(readaheadKB)), 0o644); err != nil {
		cl.log.Debug("cannot raise the mount's readahead", "err", err)
	}
}

// mountsBelow are the mount points below dir.
func mountsBelow(dir string) map[string]bool {
	out := map[string]bool{}
	ms, _ := mountinfo.Read()
	for _, m := range ms {
		if strings.HasPrefix(m.Point, dir+"/") {
			out[m.Point] = true
		}
	}
	return out
}

// isOurMount says whether path is a mount point of a cluster filesystem.
func isOurMount(path string) bool {
	ms, _ := mountinfo.Read()
	for _, m := range ms {
		if m.Point == path && m.FSType == "fuse.cfs" && m.Source == "ssi-cfs" {
			return true
		}
	}
	return false
}

// Close unmounts (lazily, when busy) and ends the session.
func (cl *Client) Close() {
	if cl.fuse != nil {
		if err := cl.fuse.Unmount(); err != nil {
			_ = unix.Unmount(cl.c.Mount, unix.MNT_DETACH)
		}
	}
	cl.stop()
	cl.mu.Lock()
	if cl.link != nil {
		cl.link.close()
	}
	cl.mu.Unlock()
	cl.wg.Wait()
}

// Drop ends the current session (its server is DOWN): waiting accesses
// fail with EIO, and new ones after the failure-detection time.
func (cl *Client) Drop() {
	cl.mu.Lock()
	l := cl.link
	cl.mu.Unlock()
	if l != nil {
		l.close()
	}
}

// Connected says whether a session with the server is up.
func (cl *Client) Connected() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	select {
	case <-cl.ready:
		return true
	default:
		return false
	}
}

// run keeps a session up: dial, watch it, and dial again when it ends.
func (cl *Client) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var l link
		var err error
		server, local := cl.target()
		if local != nil {
			l, err = dialLocal(local, cl.c.Self, cl.deliver)
		} else if d, ok := cl.c.Net.(peer.Dialer); ok {
			l, err = dialConn(ctx, d, server, cl.c.Self, 0, cl.deliver)
		} else {
			l, err = dialPeer(ctx, cl.c.Net, server, cl.c.Self, 0, cl.deliver)
		}
		if err != nil {
			cl.log.Debug("cluster filesystem: no session", "server", server, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		cl.heard.Store(time.Now().UnixNano())
		cl.mu.Lock()
		cl.link = l
		cl.epoch++
		epoch := cl.epoch
		cl.ended = make(chan struct{})
		close(cl.ready)
		cl.mu.Unlock()
		go cl.learnRoot(ctx)
		if epoch > 1 {
			// Invalidations may have been lost with the old session, and
			// the locks are gone with it if the server restarted or changed.
			cl.flushAll()
			cl.log.Info("cluster filesystem session restored", "server", server)
			go cl.reclaim(ctx)
		}
		cl.watch(ctx, l)
		// Nothing tells this node of changes any more: what it knows
		// beyond the kernel's caches goes at once (the kernel's, when a
		// new session starts).
		cl.meta.flush()
		cl.mu.Lock()
		cl.link = nil
		cl.ready = make(chan struct{})
		close(cl.ended)
		pend := cl.pending
		cl.pending = map[uint64]chan *ssiv1.FsMessage{}
		cl.mu.Unlock()
		l.close()
		for _, ch := range pend {
			close(ch) // their callers answer EIO
		}
		if ctx.Err() == nil {
			cl.log.Warn("cluster filesystem session lost; reconnecting", "server", server)
		}
	}
}

// target is the node to connect to, and its Server if it is in this
// process.
func (cl *Client) target() (uint32, *Server) {
	if cl.c.Target != nil {
		return cl.c.Target()
	}
	return cl.c.Server, cl.c.Local
}

// learnRoot records the root directory under the id the server knows it
// by (the mount may have been made before the server could be asked).
func (cl *Client) learnRoot(ctx context.Context) {
	m, errno := cl.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_GETATTR})
	if errno != 0 || m.Attr == nil {
		return
	}
	cl.rootID.Store(m.Attr.Ino)
}

// watch probes the server every second until the session ends, the
// server stays silent for long (a partition the cluster has not yet
// noticed), or Drop ends it (the cluster recorded the server DOWN).
func (cl *Client) watch(ctx context.Context, l link) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.done():
			return
		case <-t.C:
			if f := max(4*cl.c.Failure(), 10*time.Second); time.Since(time.Unix(0, cl.heard.Load())) > f {
				cl.log.Warn("cluster filesystem server silent; ending the session", "silent", f)
				return
			}
			id := cl.nextID.Add(1)
			_ = l.send(&ssiv1.FsRequest{Id: id, Op: ssiv1.FsOp_FS_OP_HELLO, Node: cl.c.Self})
		}
	}
}

// deliver takes every message from the server.
func (cl *Client) deliver(m *ssiv1.FsMessage) {
	cl.heard.Store(time.Now().UnixNano())
	if m.InvalId != 0 {
		// Dropped here, before any answer read after it is used; the
		// kernel's copies in a goroutine of their own.
		cl.meta.drop(m.Inval)
		go cl.invalidate(m)
		return
	}
	cl.mu.Lock()
	ch := cl.pending[m.Id]
	delete(cl.pending, m.Id)
	cl.mu.Unlock()
	if ch != nil {
		ch <- m
	}
}

// invalidate drops what the server names from the kernel's caches, then
// acknowledges. It runs in a goroutine of its own: never inside a FUSE
// operation, whose locks the kernel may hold.
func (cl *Client) invalidate(m *ssiv1.FsMessage) {
	cl.mu.Lock()
	srv := cl.fuse
	cl.mu.Unlock()
	if srv != nil {
		for _, iv := range m.Inval {
			if len(iv.Name) > 0 {
				srv.EntryNotify(cl.nodeID(iv.Parent), string(iv.Name))
			} else {
				srv.InodeNotify(cl.nodeID(iv.Ino), 0, 0)
			}
		}
	}
	cl.mu.Lock()
	l := cl.link
	cl.mu.Unlock()
	if l != nil {
		_ = l.send(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_ACK, Ack: m.InvalId})
	}
}

// nodeID is the kernel's number for a file the server knows by id: the
// same number (the mount uses go-fuse's ExternalNodeID), but for the root,
// which is always 1 to the kernel.
func (cl *Client) nodeID(id uint64) uint64 {
	if id == cl.rootID.Load() {
		return fuse.FUSE_ROOT_ID
	}
	return id
}

// flushAll drops every cached attribute and page, and every name of the
// directories it knows the entries of (the others' names expire within
// the entry timeout).
func (cl *Client) flushAll() {
	cl.meta.flush()
	cl.mu.Lock()
	srv := cl.fuse
	ns := make(map[uint64]*fs.Inode, len(cl.inodes))
	for id, n := range cl.inodes {
		ns[id] = n
	}
	cl.mu.Unlock()
	if srv == nil {
		return
	}
	// A name something is mounted on (the job root's binds) keeps its
	// entry: dropping it would take the mount away.
	mounted := mountsBelow(cl.c.Mount)
	for id, n := range ns {
		srv.InodeNotify(cl.nodeID(id), 0, 0)
		if n.IsDir() {
			for name := range n.Children() {
				if !mounted[filepath.Join(cl.c.Mount, n.Path(nil), name)] {
					srv.EntryNotify(cl.nodeID(id), name)
				}
			}
		}
	}
}

// call sends one request and waits for its answer. Without a session it
// waits up to the failure-detection time for one, then fails with EIO, as
// an NFS soft mount does. A request that may be made twice is sent again
// on the next session when its own was lost (the server failed over or
// restarted); the others fail with EIO.
func (cl *Client) call(ctx context.Context, r *ssiv1.FsRequest) (*ssiv1.FsMessage, syscall.Errno) {
	m, errno, lost := cl.callOnce(ctx, r, 0)
	if lost != 0 && retryable(r) && cl.waitSession(lost) {
		m, errno, _ = cl.callOnce(ctx, r, 0)
	}
	return m, errno
}

// retryable are the requests (without a handle) that may be made twice.
func retryable(r *ssiv1.FsRequest) bool {
	switch r.Op {
	case ssiv1.FsOp_FS_OP_LOOKUP, ssiv1.FsOp_FS_OP_GETATTR, ssiv1.FsOp_FS_OP_READLINK, ssiv1.FsOp_FS_OP_READDIR,
		ssiv1.FsOp_FS_OP_STATFS, ssiv1.FsOp_FS_OP_GETXATTR, ssiv1.FsOp_FS_OP_LISTXATTR, ssiv1.FsOp_FS_OP_OPEN:
		return r.Handle == 0
	case ssiv1.FsOp_FS_OP_SETATTR:
		return r.Handle == 0 && r.Set.GetValid()&(fattrAtimeNow|fattrMtimeNow) == 0
	}
	return false
}

// waitSession waits up to the failure-detection time for a session newer
// than epoch lost.
func (cl *Client) waitSession(lost uint64) bool {
	t := time.NewTimer(cl.c.Failure())
	defer t.Stop()
	for {
		cl.mu.Lock()
		up := cl.link != nil
		newer := up && cl.epoch > lost
		wait := cl.ready // no session: the next one
		if up {
			wait = cl.ended // the lost one, not yet noticed: its end first
		}
		cl.mu.Unlock()
		if newer {
			return true
		}
		select {
		case <-wait:
		case <-t.C:
			return false
		}
	}
}

// waitReady waits up to the failure-detection time for a session.
func (cl *Client) waitReady() bool {
	cl.mu.Lock()
	ready := cl.ready
	cl.mu.Unlock()
	t := time.NewTimer(cl.c.Failure())
	defer t.Stop()
	select {
	case <-ready:
		return true
	case <-t.C:
		return false
	}
}

// callOnce is one attempt; lost, when not 0, is the session (epoch) that
// ended before the answer. in, when not 0, is the session the request
// belongs to (its handle's): another one counts as that one lost.
func (cl *Client) callOnce(ctx context.Context, r *ssiv1.FsRequest, in uint64) (m *ssiv1.FsMessage, errno syscall.Errno, lost uint64) {
	t := cl.meta.begin(r)
	m, errno, lost = cl.send(ctx, r, in)
	cl.meta.end(t, r, m, errno)
	return m, errno, lost
}

// send is callOnce without the directory cache.
func (cl *Client) send(ctx context.Context, r *ssiv1.FsRequest, in uint64) (m *ssiv1.FsMessage, errno syscall.Errno, lost uint64) {
	cl.mu.Lock()
	ready := cl.ready
	cl.mu.Unlock()
	select {
	case <-ready:
	default:
		if !cl.waitReady() {
			return nil, syscall.EIO, 0
		}
	}
	r.Id = cl.nextID.Add(1)
	ch := make(chan *ssiv1.FsMessage, 1)
	cl.mu.Lock()
	l, epoch := cl.link, cl.epoch
	if in != 0 && epoch != in {
		cl.mu.Unlock()
		return nil, syscall.EIO, in
	}
	if l == nil {
		cl.mu.Unlock()
		return nil, syscall.EIO, epoch
	}
	cl.pending[r.Id] = ch
	cl.mu.Unlock()
	if err := l.send(r); err != nil {
		cl.mu.Lock()
		delete(cl.pending, r.Id)
		cl.mu.Unlock()
		return nil, syscall.EIO, epoch
	}
	var cancelled <-chan struct{}
	if r.Op == ssiv1.FsOp_FS_OP_SETLKW {
		// Only a blocked lock honours an interrupt: other requests finish
		// quickly, and the Go runtime's own signals interrupt them too.
		cancelled = ctx.Done()
	}
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				return nil, syscall.EIO, epoch
			}
			return m, syscall.Errno(m.Errno), 0
		case <-cancelled:
			cancelled = nil
			_ = l.send(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_CANCEL, Ack: r.Id})
		}
	}
}

// epochNow is the current session's number.
func (cl *Client) epochNow() uint64 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.epoch
}

// caller fills a request with who asks.
func caller(ctx context.Context, r *ssiv1.FsRequest) *ssiv1.FsRequest {
	if c, ok := fuse.FromContext(ctx); ok {
		r.Uid, r.Gid = c.Uid, c.Gid
	}
	return r
}

// expand resolves a CDSL target: {nodenum} and {nodename} become this
// node's number and name.
func (cl *Client) expand(target string) string {
	if !strings.Contains(target, "{node") {
		return target
	}
	target = strings.ReplaceAll(target, "{nodenum}", strconv.FormatUint(uint64(cl.c.Self), 10))
	return strings.ReplaceAll(target, "{nodename}", cl.c.Name)
}
