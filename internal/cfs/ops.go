package cfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"strconv"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// The kernel's FATTR_* bits of a SETATTR.
const (
	fattrMode     = 1 << 0
	fattrUID      = 1 << 1
	fattrGID      = 1 << 2
	fattrSize     = 1 << 3
	fattrAtime    = 1 << 4
	fattrMtime    = 1 << 5
	fattrAtimeNow = 1 << 7
	fattrMtimeNow = 1 << 8
)

// do runs one request. The paths it gets are cleaned first; nothing it does
// follows a symlink or leaves the export.
func (x *session) do(ctx context.Context, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	rel, err := x.srv.clean(string(r.Path))
	if err != nil {
		return nil, err
	}
	x.mark(r.Ino, r.Parent)
	switch r.Op {
	case ssiv1.FsOp_FS_OP_LOOKUP, ssiv1.FsOp_FS_OP_GETATTR:
		var st *unix.Stat_t
		if r.Handle != 0 {
			h, err := x.file(r.Handle)
			if err != nil {
				return nil, err
			}
			var s unix.Stat_t
			if err := unix.Fstat(h.fd, &s); err != nil {
				return nil, err
			}
			st = &s
		} else if st, err = x.srv.lstat(rel); err != nil {
			return nil, err
		}
		return x.answer(st), nil
	case ssiv1.FsOp_FS_OP_SETATTR:
		return x.setattr(rel, r)
	case ssiv1.FsOp_FS_OP_OPEN:
		return x.openFile(rel, r)
	case ssiv1.FsOp_FS_OP_CREATE:
		return x.create(rel, r)
	case ssiv1.FsOp_FS_OP_READ:
		h, err := x.file(r.Handle)
		if err != nil {
			return nil, err
		}
		if r.Size > maxIO {
			return nil, unix.EINVAL
		}
		x.mark(h.id)
		buf := make([]byte, r.Size)
		n, err := preadFull(h.fd, buf, r.Offset)
		if err != nil {
			return nil, err
		}
		x.mark(h.id)
		return &ssiv1.FsMessage{Data: buf[:n]}, nil
	case ssiv1.FsOp_FS_OP_WRITE:
		h, err := x.file(r.Handle)
		if err != nil {
			return nil, err
		}
		if len(r.Data) > maxIO {
			return nil, unix.EINVAL
		}
		n, err := pwriteFull(h.fd, r.Data, r.Offset)
		if n > 0 {
			x.invalidate([]*ssiv1.FsInval{inodeInval(h.id)})
		}
		if err != nil && n == 0 {
			return nil, err
		}
		m := &ssiv1.FsMessage{Count: uint32(n)}
		var st unix.Stat_t
		if unix.Fstat(h.fd, &st) == nil {
			m.Attr = x.srv.attr(&st) // the new size and times, for the client's cache
		}
		return m, nil
	case ssiv1.FsOp_FS_OP_FSYNC:
		h, err := x.file(r.Handle)
		if err != nil {
			return nil, err
		}
		if r.Flags&1 != 0 {
			return nil, unix.Fdatasync(h.fd)
		}
		return nil, unix.Fsync(h.fd)
	case ssiv1.FsOp_FS_OP_ALLOCATE:
		h, err := x.file(r.Handle)
		if err != nil {
			return nil, err
		}
		if err := unix.Fallocate(h.fd, r.Mode, r.Offset, int64(r.GetSet().GetSize())); err != nil {
			return nil, err
		}
		x.invalidate([]*ssiv1.FsInval{inodeInval(h.id)})
		return nil, nil
	case ssiv1.FsOp_FS_OP_LSEEK:
		h, err := x.file(r.Handle)
		if err != nil {
			return nil, err
		}
		off, err := unix.Seek(h.fd, r.Offset, int(r.Flags))
		if err != nil {
			return nil, err
		}
		return &ssiv1.FsMessage{Offset: off}, nil
	case ssiv1.FsOp_FS_OP_RELEASE:
		x.release(r.Handle)
		return nil, nil
	case ssiv1.FsOp_FS_OP_MKDIR, ssiv1.FsOp_FS_OP_MKNOD, ssiv1.FsOp_FS_OP_SYMLINK:
		return x.makeNode(rel, r)
	case ssiv1.FsOp_FS_OP_LINK:
		return x.link(rel, r)
	case ssiv1.FsOp_FS_OP_UNLINK, ssiv1.FsOp_FS_OP_RMDIR:
		return x.remove(rel, r.Op == ssiv1.FsOp_FS_OP_RMDIR)
	case ssiv1.FsOp_FS_OP_RENAME:
		return x.rename(rel, r)
	case ssiv1.FsOp_FS_OP_READLINK:
		dfd, name, err := x.srv.parent(rel)
		if err != nil {
			return nil, err
		}
		defer unix.Close(dfd)
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return nil, err
		}
		return &ssiv1.FsMessage{Data: buf[:n]}, nil
	case ssiv1.FsOp_FS_OP_READDIR:
		return x.readdir(rel, r.Offset)
	case ssiv1.FsOp_FS_OP_STATFS:
		var st unix.Statfs_t
		if err := unix.Fstatfs(x.srv.rootFd, &st); err != nil {
			return nil, err
		}
		return &ssiv1.FsMessage{Statfs: &ssiv1.FsStatfs{
			Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree,
			Bsize: uint32(st.Bsize), Namelen: uint32(st.Namelen), Frsize: uint32(st.Frsize),
		}}, nil
	case ssiv1.FsOp_FS_OP_GETXATTR, ssiv1.FsOp_FS_OP_LISTXATTR, ssiv1.FsOp_FS_OP_SETXATTR, ssiv1.FsOp_FS_OP_REMOVEXATTR:
		return x.xattr(rel, r)
	case ssiv1.FsOp_FS_OP_GETLK, ssiv1.FsOp_FS_OP_SETLK, ssiv1.FsOp_FS_OP_SETLKW:
		return x.lock(ctx, r)
	}
	return nil, unix.ENOSYS
}

// answer is a file's attributes, with the client's interest in it marked.
func (x *session) answer(st *unix.Stat_t) *ssiv1.FsMessage {
	a := x.srv.attr(st)
	x.mark(a.Ino)
	return &ssiv1.FsMessage{Attr: a}
}

func preadFull(fd int, buf []byte, off int64) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := unix.Pread(fd, buf[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

func pwriteFull(fd int, buf []byte, off int64) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := unix.Pwrite(fd, buf[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// openFlags are the open flags the server opens with: those of the
// client's that mean something to the file (openat2 refuses the kernel's
// internal bits, such as the one exec adds), never O_CREAT (CREATE does
// that), never O_DIRECT (the server's buffers are not aligned; the client's
// kernel already bypasses its cache), never a symlink at the end.
func openFlags(f uint32) int {
	const keep = unix.O_ACCMODE | unix.O_APPEND | unix.O_NONBLOCK | unix.O_DSYNC | unix.O_SYNC | unix.O_TRUNC | unix.O_DIRECTORY
	return int(f)&keep | unix.O_NOFOLLOW | unix.O_LARGEFILE
}

func (x *session) openFile(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	flags := openFlags(r.Flags)
	fd, err := x.srv.openAt(rel, flags, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	m := x.answer(&st)
	if flags&unix.O_TRUNC != 0 {
		x.invalidate([]*ssiv1.FsInval{inodeInval(m.Attr.Ino)})
	}
	m.Handle = x.addHandle(fd, m.Attr.Ino, rel, flags)
	return m, nil
}

// owner is who a new file belongs to: the caller, with the directory's
// group when the directory is set-group-ID.
func owner(r *ssiv1.FsRequest, dir *unix.Stat_t) (uid, gid int) {
	uid, gid = int(r.Uid), int(r.Gid)
	if dir != nil && dir.Mode&unix.S_ISGID != 0 {
		gid = int(dir.Gid)
	}
	return uid, gid
}

func (x *session) create(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	dfd, name, dst, err := x.srv.parentStat(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	flags := openFlags(r.Flags)
	created := true
	fd, err := unix.Openat(dfd, name, flags|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, r.Mode&0o7777)
	if err == unix.EEXIST && r.Flags&unix.O_EXCL == 0 {
		created = false
		fd, err = unix.Openat(dfd, name, flags|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, err
	}
	if created {
		uid, gid := owner(r, dst)
		if err := unix.Fchown(fd, uid, gid); err == nil {
			err = unix.Fchmod(fd, r.Mode&0o7777)
		}
		if err != nil {
			unix.Close(fd)
			_ = unix.Unlinkat(dfd, name, 0)
			return nil, err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	pid := x.srv.fileID(dst)
	x.mark(pid)
	m := x.answer(&st)
	m.Attr2 = x.srv.dirAttr(dfd)
	iv := []*ssiv1.FsInval{entryInval(pid, name), inodeInval(pid)}
	if !created && flags&unix.O_TRUNC != 0 {
		iv = append(iv, inodeInval(m.Attr.Ino))
	}
	x.invalidate(iv)
	m.Handle = x.addHandle(fd, m.Attr.Ino, rel, flags)
	return m, nil
}

func (x *session) makeNode(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	dfd, name, dst, err := x.srv.parentStat(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	mode := r.Mode & 0o7777
	switch r.Op {
	case ssiv1.FsOp_FS_OP_MKDIR:
		if dst.Mode&unix.S_ISGID != 0 {
			mode |= unix.S_ISGID
		}
		err = unix.Mkdirat(dfd, name, mode)
	case ssiv1.FsOp_FS_OP_MKNOD:
		switch r.Mode & unix.S_IFMT {
		case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFCHR, unix.S_IFBLK:
		default:
			return nil, unix.EINVAL
		}
		err = unix.Mknodat(dfd, name, r.Mode, int(r.Rdev))
	case ssiv1.FsOp_FS_OP_SYMLINK:
		if len(r.Path2) >= unix.PathMax || bytes.IndexByte(r.Path2, 0) >= 0 {
			return nil, unix.EINVAL
		}
		err = unix.Symlinkat(string(r.Path2), dfd, name)
	}
	if err != nil {
		return nil, err
	}
	uid, gid := owner(r, dst)
	err = unix.Fchownat(dfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && r.Op != ssiv1.FsOp_FS_OP_SYMLINK {
		err = unix.Fchmodat(dfd, name, mode, 0)
	}
	if err != nil {
		if r.Op == ssiv1.FsOp_FS_OP_MKDIR {
			_ = unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
		} else {
			_ = unix.Unlinkat(dfd, name, 0)
		}
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	pid := x.srv.fileID(dst)
	x.mark(pid)
	x.invalidate([]*ssiv1.FsInval{entryInval(pid, name), inodeInval(pid)})
	m := x.answer(&st)
	m.Attr2 = x.srv.dirAttr(dfd)
	return m, nil
}

func (x *session) link(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	to, err := x.srv.clean(string(r.Path2))
	if err != nil {
		return nil, err
	}
	ofd, oname, err := x.srv.parent(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(ofd)
	nfd, nname, err := x.srv.parent(to)
	if err != nil {
		return nil, err
	}
	defer unix.Close(nfd)
	if err := unix.Linkat(ofd, oname, nfd, nname, 0); err != nil {
		return nil, err
	}
	var st, dst unix.Stat_t
	if err := unix.Fstatat(nfd, nname, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	if err := unix.Fstat(nfd, &dst); err != nil {
		return nil, err
	}
	pid := x.srv.fileID(&dst)
	m := x.answer(&st)
	m.Attr2 = x.srv.attr(&dst)
	x.mark(pid)
	x.invalidate([]*ssiv1.FsInval{entryInval(pid, nname), inodeInval(pid), inodeInval(m.Attr.Ino)})
	return m, nil
}

func (x *session) remove(rel string, dir bool) (*ssiv1.FsMessage, error) {
	dfd, name, dst, err := x.srv.parentStat(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	flags := 0
	if dir {
		flags = unix.AT_REMOVEDIR
	}
	if err := unix.Unlinkat(dfd, name, flags); err != nil {
		return nil, err
	}
	x.srv.gone(&st)
	pid := x.srv.fileID(dst)
	x.invalidate([]*ssiv1.FsInval{entryInval(pid, name), inodeInval(pid), inodeInval(x.srv.fileID(&st))})
	// The file itself changed too (its link count): the client has only
	// its name.
	return &ssiv1.FsMessage{Attr2: x.srv.dirAttr(dfd), Inval: []*ssiv1.FsInval{inodeInval(x.srv.fileID(&st))}}, nil
}

func (x *session) rename(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	to, err := x.srv.clean(string(r.Path2))
	if err != nil {
		return nil, err
	}
	if rel == "" || to == "" {
		return nil, unix.EBUSY
	}
	ofd, oname, err := x.srv.parent(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(ofd)
	nfd, nname, err := x.srv.parent(to)
	if err != nil {
		return nil, err
	}
	defer unix.Close(nfd)
	var src, dstFile, od, nd unix.Stat_t
	if err := unix.Fstatat(ofd, oname, &src, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	hadDst := unix.Fstatat(nfd, nname, &dstFile, unix.AT_SYMLINK_NOFOLLOW) == nil
	if err := unix.Renameat2(ofd, oname, nfd, nname, uint(r.Flags)); err != nil {
		return nil, err
	}
	if hadDst && r.Flags&unix.RENAME_EXCHANGE == 0 {
		x.srv.gone(&dstFile)
	}
	_ = unix.Fstat(ofd, &od)
	_ = unix.Fstat(nfd, &nd)
	op, np := x.srv.fileID(&od), x.srv.fileID(&nd)
	iv := []*ssiv1.FsInval{entryInval(op, oname), entryInval(np, nname), inodeInval(op), inodeInval(x.srv.fileID(&src))}
	if np != op {
		iv = append(iv, inodeInval(np))
	}
	if hadDst {
		iv = append(iv, inodeInval(x.srv.fileID(&dstFile)))
	}
	x.invalidate(iv)
	// The files renamed and replaced changed too (times, link count):
	// the client has only their names.
	return &ssiv1.FsMessage{Inval: iv}, nil
}

func (x *session) setattr(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	in := r.Set
	if in == nil {
		return nil, unix.EINVAL
	}
	var h *handle
	if r.Handle != 0 {
		var err error
		if h, err = x.file(r.Handle); err != nil {
			return nil, err
		}
	}
	dfd := -1
	name := ""
	if rel != "" {
		var err error
		if dfd, name, err = x.srv.parent(rel); err != nil {
			return nil, err
		}
		defer unix.Close(dfd)
	}
	// at runs f on the file: by its handle, or by name in its directory (the
	// root by its own descriptor).
	atPath := func(f func(dirfd int, name string, flags int) error) error {
		if dfd < 0 {
			return f(x.srv.rootFd, "", unix.AT_EMPTY_PATH)
		}
		return f(dfd, name, unix.AT_SYMLINK_NOFOLLOW)
	}
	if in.Valid&fattrMode != 0 {
		var err error
		if h != nil {
			err = unix.Fchmod(h.fd, in.Mode&0o7777)
		} else {
			err = x.srv.chmod(rel, in.Mode&0o7777)
		}
		if err != nil {
			return nil, err
		}
	}
	if in.Valid&(fattrUID|fattrGID) != 0 {
		uid, gid := -1, -1
		if in.Valid&fattrUID != 0 {
			uid = int(in.Uid)
		}
		if in.Valid&fattrGID != 0 {
			gid = int(in.Gid)
		}
		if err := atPath(func(d int, n string, fl int) error { return unix.Fchownat(d, n, uid, gid, fl) }); err != nil {
			return nil, err
		}
	}
	if in.Valid&fattrSize != 0 {
		var err error
		if h != nil && h.flags&unix.O_ACCMODE != unix.O_RDONLY {
			err = unix.Ftruncate(h.fd, int64(in.Size))
		} else {
			var fd int
			if fd, err = x.srv.openAt(rel, unix.O_WRONLY|unix.O_NOFOLLOW, 0); err == nil {
				err = unix.Ftruncate(fd, int64(in.Size))
				unix.Close(fd)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if in.Valid&(fattrAtime|fattrMtime|fattrAtimeNow|fattrMtimeNow) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		switch {
		case in.Valid&fattrAtimeNow != 0:
			ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
		case in.Valid&fattrAtime != 0:
			ts[0] = unix.NsecToTimespec(in.AtimeNs)
		}
		switch {
		case in.Valid&fattrMtimeNow != 0:
			ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
		case in.Valid&fattrMtime != 0:
			ts[1] = unix.NsecToTimespec(in.MtimeNs)
		}
		if err := atPath(func(d int, n string, fl int) error { return unix.UtimesNanoAt(d, n, ts, fl) }); err != nil {
			return nil, err
		}
	}
	var st unix.Stat_t
	var err error
	if h != nil {
		err = unix.Fstat(h.fd, &st)
	} else {
		var p *unix.Stat_t
		if p, err = x.srv.lstat(rel); err == nil {
			st = *p
		}
	}
	if err != nil {
		return nil, err
	}
	m := x.answer(&st)
	x.invalidate([]*ssiv1.FsInval{inodeInval(m.Attr.Ino)})
	return m, nil
}

// chmod changes a file's mode without following a symlink (chmod(2)
// always would; a symlink's own mode means nothing on Linux).
func (s *Server) chmod(rel string, mode uint32) error {
	fd, err := s.openAt(rel, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.EOPNOTSUPP
	}
	return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode)
}

// readdir lists a directory from entry offset on, a page at a time.
func (x *session) readdir(rel string, offset int64) (*ssiv1.FsMessage, error) {
	fd, err := x.srv.openAt(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	x.mark(x.srv.fileID(&st))
	var out []*ssiv1.FsDirEntry
	var ids []uint64
	buf := make([]byte, 64<<10)
	idx := int64(0)
	more := false
	for !more {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.LittleEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			ino := binary.LittleEndian.Uint64(b[0:8])
			typ := b[18]
			nm := b[19:reclen]
			if i := indexNUL(nm); i >= 0 {
				nm = nm[:i]
			}
			b = b[reclen:]
			name := string(nm)
			if name == "." || name == ".." || x.srv.hidden(rel, name) {
				continue
			}
			if idx >= offset {
				if len(out) == dirPage {
					more = true
					break
				}
				e := &ssiv1.FsDirEntry{Name: []byte(name), Ino: x.dirEntryID(&st, ino), Mode: uint32(typ) << 12}
				// The kernel asks for every entry's attributes
				// (READDIRPLUS): they travel with the listing instead
				// of one LOOKUP each.
				var est unix.Stat_t
				if unix.Fstatat(fd, name, &est, unix.AT_SYMLINK_NOFOLLOW) == nil {
					e.Attr = x.srv.attr(&est)
					e.Ino = e.Attr.Ino
					ids = append(ids, e.Attr.Ino)
				}
				out = append(out, e)
			}
			idx++
		}
	}
	x.mark(append(ids, x.srv.fileID(&st))...)
	return &ssiv1.FsMessage{Entries: out, More: more}, nil
}

// dirAttr is the attributes of the directory open as dfd, after a change
// in it (nil if it cannot be stat'd: the client then asks).
func (s *Server) dirAttr(dfd int) *ssiv1.FsAttr {
	var st unix.Stat_t
	if unix.Fstat(dfd, &st) != nil {
		return nil
	}
	return s.attr(&st)
}

// dirEntryID is an entry's id as fileID would give it (an entry on another
// filesystem, a mount point, gets its real id from LOOKUP).
func (x *session) dirEntryID(dir *unix.Stat_t, ino uint64) uint64 {
	return x.srv.fileID(&unix.Stat_t{Dev: dir.Dev, Ino: ino})
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// hidden says whether name in dir is excluded from the export.
func (s *Server) hidden(dir, name string) bool {
	if len(s.exclude) == 0 {
		return false
	}
	p := name
	if dir != "" {
		p = dir + "/" + name
	}
	return s.exclude[p]
}
