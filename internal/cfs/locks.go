package cfs

import (
	"context"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// Extended attributes, and the locks of open files.

// lkFlock marks a lock request as flock(2) rather than fcntl(2).
const lkFlock = 1

// xattr serves the extended-attribute calls through a descriptor of the
// file itself (no path is looked up again).
func (x *session) xattr(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	if len(r.Name) > 255 || len(r.Data) > maxXattr || r.Size > maxXattr {
		return nil, unix.E2BIG
	}
	fd, err := x.srv.openAt(rel, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	switch r.Op {
	case ssiv1.FsOp_FS_OP_GETXATTR:
		buf := make([]byte, r.Size)
		n, err := unix.Getxattr(p, string(r.Name), buf)
		if err != nil {
			return nil, err
		}
		if r.Size == 0 {
			return &ssiv1.FsMessage{Count: uint32(n)}, nil
		}
		return &ssiv1.FsMessage{Data: buf[:n], Count: uint32(n)}, nil
	case ssiv1.FsOp_FS_OP_LISTXATTR:
		buf := make([]byte, r.Size)
		n, err := unix.Listxattr(p, buf)
		if err != nil {
			return nil, err
		}
		if r.Size == 0 {
			return &ssiv1.FsMessage{Count: uint32(n)}, nil
		}
		return &ssiv1.FsMessage{Data: buf[:n], Count: uint32(n)}, nil
	case ssiv1.FsOp_FS_OP_SETXATTR:
		err = unix.Setxattr(p, string(r.Name), r.Data, int(r.Flags))
	default:
		err = unix.Removexattr(p, string(r.Name))
	}
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil {
		x.invalidate([]*ssiv1.FsInval{inodeInval(x.srv.fileID(&st))})
	}
	return nil, nil
}

// release closes a handle, and the lock descriptors of its file when the
// session holds the file open no more.
func (x *session) release(id uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	h, ok := x.handles[id]
	if !ok {
		return
	}
	delete(x.handles, id)
	unix.Close(h.fd)
	for _, o := range x.handles {
		if o.id == h.id {
			return
		}
	}
	for k, fd := range x.locks {
		if k.file == h.id {
			unix.Close(fd)
			delete(x.locks, k)
		}
	}
}

// lock serves fcntl and flock locks. Each lock owner has an open file
// description of its own on the file, so the server's kernel does the
// conflict checks, between nodes and with local users of the export; the
// session's end closes them, which releases every lock the node held.
func (x *session) lock(ctx context.Context, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	h, err := x.file(r.Handle)
	if err != nil {
		return nil, err
	}
	lk := r.Lock
	if lk == nil {
		return nil, unix.EINVAL
	}
	if err := x.waitGrace(ctx, r); err != nil {
		return nil, err
	}
	key := lockKey{owner: r.Owner, file: h.id, flock: r.Flags&lkFlock != 0}
	fd, err := x.lockFd(key, h)
	if err != nil {
		return nil, err
	}
	if key.flock {
		if r.Op == ssiv1.FsOp_FS_OP_GETLK {
			return nil, unix.EINVAL
		}
		how := unix.LOCK_UN
		switch lk.Type {
		case unix.F_RDLCK:
			how = unix.LOCK_SH
		case unix.F_WRLCK:
			how = unix.LOCK_EX
		}
		try := func() error { return unix.Flock(fd, how|unix.LOCK_NB) }
		return nil, x.retryLock(ctx, r.Op == ssiv1.FsOp_FS_OP_SETLKW && r.Flags&lkReclaim == 0, try)
	}
	fl := unix.Flock_t{Type: int16(lk.Type), Whence: 0, Start: int64(lk.Start)}
	if lk.End < 1<<63-1 && lk.End >= lk.Start {
		fl.Len = int64(lk.End - lk.Start + 1)
	}
	if r.Op == ssiv1.FsOp_FS_OP_GETLK {
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
			return nil, err
		}
		out := &ssiv1.FsLock{Type: uint32(fl.Type), Start: uint64(fl.Start)}
		if fl.Len == 0 {
			out.End = 1<<63 - 1
		} else {
			out.End = uint64(fl.Start + fl.Len - 1)
		}
		return &ssiv1.FsMessage{Lock: out}, nil
	}
	try := func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &fl) }
	return nil, x.retryLock(ctx, r.Op == ssiv1.FsOp_FS_OP_SETLKW && r.Flags&lkReclaim == 0, try)
}

// retryLock takes a lock; a blocking request tries again until it gets it
// or the client cancels (the caller was interrupted) or the session ends.
func (x *session) retryLock(ctx context.Context, block bool, try func() error) error {
	wait := time.Millisecond
	for {
		err := try()
		if err == unix.EINTR {
			continue
		}
		if !block || (err != unix.EAGAIN && err != unix.EWOULDBLOCK && err != unix.EACCES) {
			if err == unix.EWOULDBLOCK || err == unix.EACCES {
				return unix.EAGAIN
			}
			return err
		}
		select {
		case <-ctx.Done():
			return unix.EINTR
		case <-x.done:
			return unix.EIO
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

func (x *session) lockFd(key lockKey, h *handle) (int, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ended {
		return -1, unix.EIO
	}
	if fd, ok := x.locks[key]; ok {
		return fd, nil
	}
	p := "/proc/self/fd/" + strconv.Itoa(h.fd)
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		fd, err = unix.Open(p, h.flags&unix.O_ACCMODE|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	}
	if err != nil {
		return -1, err
	}
	x.locks[key] = fd
	return fd, nil
}
