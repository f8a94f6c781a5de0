package cfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// node is a file of the cluster filesystem as the kernel sees it. It names
// the file by its path from the mount's root, which the server resolves
// beneath its export.
type node struct {
	fs.Inode
	c *Client

	lmu   sync.Mutex
	locks []*ssiv1.FsRequest // the granted lock requests, to make again on a new session (reclaim.go)
	files map[*file]struct{} // the open files
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
	_ fs.NodeOnForgetter    = (*node)(nil)
)

func (n *node) path() string { return n.Path(nil) }

func (n *node) child(name string) string {
	if p := n.path(); p != "" {
		return p + "/" + name
	}
	return name
}

func (n *node) id() uint64 { return n.StableAttr().Ino }

func fillAttr(a *ssiv1.FsAttr, out *fuse.Attr) {
	out.Ino = a.Ino
	out.Mode = a.Mode
	out.Nlink = a.Nlink
	out.Uid, out.Gid = a.Uid, a.Gid
	out.Rdev = a.Rdev
	out.Size = a.Size
	out.Blocks = a.Blocks
	out.Blksize = a.Blksize
	out.Atime, out.Atimensec = uint64(a.AtimeNs/1e9), uint32(a.AtimeNs%1e9)
	out.Mtime, out.Mtimensec = uint64(a.MtimeNs/1e9), uint32(a.MtimeNs%1e9)
	out.Ctime, out.Ctimensec = uint64(a.CtimeNs/1e9), uint32(a.CtimeNs%1e9)
}

// newChild makes (or finds) the inode of a file the server described.
func (n *node) newChild(ctx context.Context, a *ssiv1.FsAttr, out *fuse.EntryOut) *fs.Inode {
	fillAttr(a, &out.Attr)
	ch := n.NewInode(ctx, &node{c: n.c}, fs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: a.Ino})
	n.c.mu.Lock()
	n.c.inodes[a.Ino] = ch
	n.c.mu.Unlock()
	return ch
}

// OnForget drops the kernel's last reference from the table of inodes.
func (n *node) OnForget() {
	n.c.mu.Lock()
	if n.c.inodes[n.id()] == n.EmbeddedInode() {
		delete(n.c.inodes, n.id())
	}
	n.c.mu.Unlock()
	n.c.meta.forget(n.id()) // the server may give the number to another file
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if name != "." && name != ".." && n.c.meta.absent(n.id(), name) {
		return nil, syscall.ENOENT // the directory's names are known (metacache.go)
	}
	m, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_LOOKUP, Path: []byte(n.child(name)), Parent: n.id()})
	if errno != 0 {
		return nil, errno
	}
	return n.newChild(ctx, m.Attr, out), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if a, ok := n.c.meta.attr(n.id()); ok {
		fillAttr(a, &out.Attr)
		return 0
	}
	r := &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_GETATTR, Path: []byte(n.path()), Ino: n.id()}
	if fh, ok := f.(*file); ok {
		r.Handle, _ = fh.handle(ctx)
	}
	m, errno := n.c.call(ctx, r)
	if errno == syscall.EBADF && r.Handle != 0 {
		r.Handle = 0
		m, errno = n.c.call(ctx, r)
	}
	if errno != 0 {
		return errno
	}
	fillAttr(m.Attr, &out.Attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	set := &ssiv1.FsSetAttr{
		Valid: in.Valid, Mode: in.Mode, Uid: in.Owner.Uid, Gid: in.Owner.Gid, Size: in.Size,
		AtimeNs: int64(in.Atime)*1e9 + int64(in.Atimensec), MtimeNs: int64(in.Mtime)*1e9 + int64(in.Mtimensec),
	}
	r := caller(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SETATTR, Path: []byte(n.path()), Ino: n.id(), Set: set})
	if fh, ok := f.(*file); ok {
		r.Handle, _ = fh.handle(ctx)
	}
	m, errno := n.c.call(ctx, r)
	if errno != 0 {
		return errno
	}
	fillAttr(m.Attr, &out.Attr)
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	m, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_OPEN, Path: []byte(n.path()), Ino: n.id(), Flags: flags})
	if errno != 0 {
		return nil, 0, errno
	}
	// Pages stay cached across opens: every change made through the
	// cluster filesystem reaches this node as an invalidation first.
	return n.newFile(m.Handle, flags), fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) newFile(h uint64, flags uint32) *file {
	f := &file{n: n, id: h, flags: flags, epoch: n.c.epochNow()}
	n.lmu.Lock()
	if n.files == nil {
		n.files = map[*file]struct{}{}
	}
	n.files[f] = struct{}{}
	n.lmu.Unlock()
	return f
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	m, errno := n.c.call(ctx, caller(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_CREATE, Path: []byte(n.child(name)), Parent: n.id(), Flags: flags, Mode: mode}))
	if errno != 0 {
		return nil, nil, 0, errno
	}
	ch := n.newChild(ctx, m.Attr, out)
	// The kernel asks for the file's capability before the first write:
	// a file just made has none (metacache.go keeps that; TestCapabilityCheck).
	return ch, (ch.Operations().(*node)).newFile(m.Handle, flags&^syscall.O_TRUNC), fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) makeNode(ctx context.Context, r *ssiv1.FsRequest, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	m, errno := n.c.call(ctx, caller(ctx, r))
	if errno != 0 {
		return nil, errno
	}
	return n.newChild(ctx, m.Attr, out), 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.makeNode(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_MKDIR, Path: []byte(n.child(name)), Parent: n.id(), Mode: mode}, out)
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.makeNode(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_MKNOD, Path: []byte(n.child(name)), Parent: n.id(), Mode: mode, Rdev: dev}, out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.makeNode(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYMLINK, Path: []byte(n.child(name)), Parent: n.id(), Path2: []byte(target)}, out)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	return n.makeNode(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_LINK, Path: []byte(t.path()), Path2: []byte(n.child(name)), Ino: t.id(), Parent: n.id()}, out)
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	_, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_UNLINK, Path: []byte(n.child(name)), Parent: n.id()})
	return errno
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	_, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_RMDIR, Path: []byte(n.child(name)), Parent: n.id()})
	return errno
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	_, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_RENAME, Path: []byte(n.child(name)), Path2: []byte(np.child(newName)), Parent: n.id(), Ino: np.id(), Flags: flags})
	return errno
}

// Readlink resolves CDSLs: {nodenum} and {nodename} in a target become
// this node's.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	m, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_READLINK, Path: []byte(n.path()), Ino: n.id()})
	if errno != 0 {
		return nil, errno
	}
	return []byte(n.c.expand(string(m.Data))), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	m, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_STATFS})
	if errno != 0 {
		return errno
	}
	s := m.Statfs
	out.Blocks, out.Bfree, out.Bavail, out.Files, out.Ffree = s.Blocks, s.Bfree, s.Bavail, s.Files, s.Ffree
	out.Bsize, out.NameLen, out.Frsize = s.Bsize, s.Namelen, s.Frsize
	return 0
}

// capsXattr is what the kernel asks for before every write to a file it
// has not seen without it (to drop file capabilities on write).
const capsXattr = "security.capability"

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if n.c.meta.lacks(n.id(), attr) {
		return 0, syscall.ENODATA // known absent (metacache.go)
	}
	m, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_GETXATTR, Path: []byte(n.path()), Ino: n.id(), Name: []byte(attr), Size: uint32(len(dest))})
	if errno != 0 {
		return 0, errno
	}
	copy(dest, m.Data)
	return m.Count, 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	m, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_LISTXATTR, Path: []byte(n.path()), Ino: n.id(), Size: uint32(len(dest))})
	if errno != 0 {
		return 0, errno
	}
	copy(dest, m.Data)
	return m.Count, 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	_, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SETXATTR, Path: []byte(n.path()), Ino: n.id(), Name: []byte(attr), Data: data, Flags: flags})
	return errno
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	_, errno := n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_REMOVEXATTR, Path: []byte(n.path()), Ino: n.id(), Name: []byte(attr)})
	return errno
}

// file is an open file: the server's handle, opened again by path when the
// session it belonged to is gone (its locks are not).
type file struct {
	n     *node
	flags uint32
	mu    sync.Mutex
	id    uint64
	epoch uint64
	dead  bool
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileGetlker   = (*file)(nil)
	_ fs.FileSetlker   = (*file)(nil)
	_ fs.FileSetlkwer  = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
)

// handle is the file's handle in the current session, reopened if need
// be, and that session's number.
func (f *file) handle(ctx context.Context) (uint64, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return 0, 0
	}
	if e := f.n.c.epochNow(); e != f.epoch {
		m, errno := f.n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_OPEN, Path: []byte(f.n.path()), Ino: f.n.id(), Flags: f.flags &^ (syscall.O_TRUNC | syscall.O_CREAT | syscall.O_EXCL)})
		if errno != 0 {
			return 0, 0
		}
		f.id, f.epoch = m.Handle, e
	}
	return f.id, f.epoch
}

// call sends a request about the open file. When the session is lost
// before the answer, a request that may be made twice is sent again
// through the file opened anew on the next session (the server failed
// over or restarted): reads, writes at an offset, fsync, lseek.
func (f *file) call(ctx context.Context, r *ssiv1.FsRequest) (*ssiv1.FsMessage, syscall.Errno) {
	for again := false; ; again = true {
		h, epoch := f.handle(ctx)
		if h == 0 {
			return nil, syscall.EIO
		}
		r.Handle, r.Ino = h, f.n.id()
		// The handle is only good in its own session: a session that
		// changed between the two counts as lost.
		m, errno, lost := f.n.c.callOnce(ctx, r, epoch)
		if lost == 0 || again || !f.retryable(r) || !f.n.c.waitSession(lost) {
			return m, errno
		}
	}
}

func (f *file) retryable(r *ssiv1.FsRequest) bool {
	switch r.Op {
	case ssiv1.FsOp_FS_OP_READ, ssiv1.FsOp_FS_OP_FSYNC, ssiv1.FsOp_FS_OP_LSEEK, ssiv1.FsOp_FS_OP_GETATTR, ssiv1.FsOp_FS_OP_GETLK:
		return true
	case ssiv1.FsOp_FS_OP_SETLK, ssiv1.FsOp_FS_OP_SETLKW:
		return true // the session's locks went with it: asking again is the same request
	case ssiv1.FsOp_FS_OP_WRITE:
		return f.flags&syscall.O_APPEND == 0
	case ssiv1.FsOp_FS_OP_ALLOCATE:
		return r.Mode == 0
	}
	return false
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	m, errno := f.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_READ, Offset: off, Size: uint32(len(dest))})
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(m.Data), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	m, errno := f.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_WRITE, Offset: off, Data: data})
	if errno != 0 {
		return 0, errno
	}
	return m.Count, 0
}

// Flush has nothing to do: writes reach the server before they return
// (POSIX locks are dropped by the kernel's own unlock on close).
func (f *file) Flush(ctx context.Context) syscall.Errno { return 0 }

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	_, errno := f.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_FSYNC, Flags: flags})
	return errno
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.n.lmu.Lock()
	delete(f.n.files, f)
	f.n.lmu.Unlock()
	f.mu.Lock()
	id, epoch := f.id, f.epoch
	f.dead = true
	f.mu.Unlock()
	if epoch == f.n.c.epochNow() {
		_, _ = f.n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_RELEASE, Handle: id})
	}
	return 0
}

func lockOf(lk *fuse.FileLock) *ssiv1.FsLock {
	return &ssiv1.FsLock{Start: lk.Start, End: lk.End, Type: lk.Typ, Pid: lk.Pid}
}

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	m, errno := f.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_GETLK, Owner: owner, Lock: lockOf(lk), Flags: flags})
	if errno != 0 {
		return errno
	}
	out.Start, out.End, out.Typ, out.Pid = m.Lock.Start, m.Lock.End, m.Lock.Type, 0
	return 0
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setLock(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SETLK, Owner: owner, Lock: lockOf(lk), Flags: flags &^ lkReclaim})
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setLock(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SETLKW, Owner: owner, Lock: lockOf(lk), Flags: flags &^ lkReclaim})
}

// setLock takes or drops a lock and remembers it to take it again after a
// failover (reclaim.go).
func (f *file) setLock(ctx context.Context, r *ssiv1.FsRequest) syscall.Errno {
	_, errno := f.call(ctx, r)
	if errno == 0 {
		f.n.held(r)
	}
	return errno
}

func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	_, errno := f.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_ALLOCATE, Offset: int64(off), Mode: mode, Set: &ssiv1.FsSetAttr{Size: size}})
	return errno
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	m, errno := f.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_LSEEK, Offset: int64(off), Flags: whence})
	if errno != 0 {
		return 0, errno
	}
	return uint64(m.Offset), 0
}
