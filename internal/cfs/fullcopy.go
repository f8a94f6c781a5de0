package cfs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// The full copy (docs/CFS.md "Replica and failover", step 2): the serving
// node sends its whole tree to a replica that was away or is new; the
// replica makes itself the same and removes what the server has not.

// fullCopy sends the whole export, then the files open for writing.
// Unchanged files (same type, size, times, owner and mode) cost one
// round trip; the others are copied, holes left out.
func (rp *replicator) fullCopy(ctx context.Context) (files int, bytes int64, err error) {
	s := rp.srv
	if _, err := rp.roundTrip(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_BEGIN}); err != nil {
		return 0, 0, err
	}
	err = filepath.WalkDir(s.root, func(p string, d fs.DirEntry, werr error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rel, _ := filepath.Rel(s.root, p)
		if rel == "." {
			rel = ""
		}
		if _, cerr := s.clean(rel); cerr != nil {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if werr != nil {
			if errors.Is(werr, fs.ErrNotExist) {
				return nil // gone since its directory was read
			}
			return werr
		}
		st, err := s.lstat(rel)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
		n, err := rp.copyFile(rel, st)
		files++
		bytes += n
		return err
	})
	if err != nil {
		return files, bytes, err
	}
	if _, err := rp.roundTrip(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_END}); err != nil {
		return files, bytes, err
	}
	// The files open for writing now: the replica opens them too, so that
	// the changes to come through them can be copied.
	s.mu.Lock()
	ss := make([]*session, 0, len(s.sessions))
	for x := range s.sessions {
		ss = append(ss, x)
	}
	s.mu.Unlock()
	for _, x := range ss {
		x.mu.Lock()
		type open struct {
			id uint64
			h  *handle
		}
		var hs []open
		for id, h := range x.handles {
			if writable(h.flags) {
				hs = append(hs, open{id, h})
			}
		}
		x.mu.Unlock()
		for _, o := range hs {
			var st unix.Stat_t
			if unix.Fstat(o.h.fd, &st) != nil || st.Nlink == 0 {
				continue // unlinked: nothing on the replica to open
			}
			c := &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_OPEN, Session: x.id, Handle: o.id, Path: []byte(s.pathOf(o.h)), Flags: uint32(o.h.flags &^ unix.O_TRUNC)}
			if _, err := rp.roundTrip(c); err != nil {
				return files, bytes, err
			}
			x.setCopied(o.id)
		}
	}
	return files, bytes, nil
}

// copyFile sends one file's attributes and, if the replica asks, its data
// and extended attributes.
func (rp *replicator) copyFile(rel string, st *unix.Stat_t) (int64, error) {
	s := rp.srv
	put := &ssiv1.FsRequest{
		Op: ssiv1.FsOp_FS_OP_SYNC_PUT, Path: []byte(rel), Mode: st.Mode, Rdev: uint32(st.Rdev), Ino: s.fileID(st),
		Set: &ssiv1.FsSetAttr{Uid: st.Uid, Gid: st.Gid, Size: uint64(st.Size), AtimeNs: st.Atim.Nano(), MtimeNs: st.Mtim.Nano()},
	}
	if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		put.Flags = 1
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		dfd, name, err := s.parent(rel)
		if err != nil {
			return 0, err
		}
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(dfd, name, buf)
		unix.Close(dfd)
		if err != nil {
			return 0, err
		}
		put.Path2 = buf[:n]
	}
	a, err := rp.roundTrip(put)
	if err != nil {
		return 0, err
	}
	var sent int64
	if a.Count == 1 {
		if sent, err = rp.copyData(rel, put); err != nil {
			return sent, err
		}
	}
	return sent, rp.copyXattrs(rel, st)
}

// copyData sends a regular file's data, skipping its holes.
func (rp *replicator) copyData(rel string, put *ssiv1.FsRequest) (int64, error) {
	fd, err := rp.srv.openAt(rel, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var sent int64
	buf := make([]byte, maxIO)
	size := int64(put.Set.Size)
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole is left
		}
		if err != nil {
			data = off
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for off = data; off < hole; {
			n, err := preadFull(fd, buf[:min(int64(len(buf)), hole-off)], off)
			if err != nil {
				return sent, err
			}
			if n == 0 {
				break
			}
			if _, err := rp.roundTrip(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_DATA, Path: []byte(rel), Offset: off, Data: buf[:n]}); err != nil {
				return sent, err
			}
			off += int64(n)
			sent += int64(n)
		}
		if off < hole {
			break // the file shrank
		}
	}
	_, err = rp.roundTrip(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_DATA, Path: []byte(rel), Flags: 1, Set: put.Set})
	return sent, err
}

func (rp *replicator) copyXattrs(rel string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	fd, err := rp.srv.openAt(rel, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	buf := make([]byte, maxXattr)
	n, err := unix.Listxattr(p, buf)
	if err != nil || n == 0 {
		return nil
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		val := make([]byte, maxXattr)
		m, err := unix.Getxattr(p, name, val)
		if err != nil {
			continue
		}
		if _, err := rp.roundTrip(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_XATTR, Path: []byte(rel), Name: []byte(name), Data: val[:m]}); err != nil {
			return err
		}
	}
	return nil
}

// copyState is a full copy in progress on the replica.
type copyState struct {
	seen map[string]bool   // the paths the server named
	byID map[uint64]string // a path of each id (hard links)
	fd   int               // the file whose data comes (-1: none)
	path string
}

func (x *session) endCopy() {
	if x.sync != nil && x.sync.fd >= 0 {
		unix.Close(x.sync.fd)
		x.sync.fd = -1
	}
}

// syncPut makes rel what the server has; answers Count 1 when it needs
// the file's data.
func (x *session) syncPut(rel string, r *ssiv1.FsRequest) (*ssiv1.FsMessage, error) {
	cs := x.sync
	if cs == nil || r.Set == nil {
		return nil, unix.EINVAL
	}
	s := x.srv
	want := r.Mode & unix.S_IFMT
	link := ""
	if r.Flags&1 != 0 {
		link = cs.byID[r.Ino]
	}
	st, err := s.lstat(rel)
	if err == nil && rel != "" && !same(s, rel, st, r, link) {
		if err := s.removeAll(rel); err != nil {
			return nil, err
		}
		err = unix.ENOENT
	}
	need := false
	if errors.Is(err, unix.ENOENT) {
		if err := s.makeLike(rel, r, link); err != nil {
			return nil, err
		}
		if st, err = s.lstat(rel); err != nil {
			return nil, err
		}
		need = want == unix.S_IFREG && link == "" && r.Set.Size > 0
	} else if err != nil {
		return nil, err
	}
	cs.seen[rel] = true
	if r.Flags&1 != 0 && cs.byID[r.Ino] == "" {
		cs.byID[r.Ino] = rel
	}
	s.setAlias(st.Ino, r.Ino)
	if link != "" {
		return &ssiv1.FsMessage{}, nil
	}
	if err := s.own(rel, r); err != nil {
		return nil, err
	}
	if want == unix.S_IFREG && (need || uint64(st.Size) != r.Set.Size || st.Mtim.Nano() != r.Set.MtimeNs) {
		x.endCopy()
		fd, err := s.openAt(rel, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_TRUNC, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.Ftruncate(fd, int64(r.Set.Size)); err != nil {
			unix.Close(fd)
			return nil, err
		}
		cs.fd, cs.path = fd, rel
		return &ssiv1.FsMessage{Count: 1}, nil
	}
	return &ssiv1.FsMessage{}, s.times(rel, r.Set)
}

// same says whether the file at rel can stay as it is (its data may still
// be copied): same type, link target, device, and hard link.
func same(s *Server, rel string, st *unix.Stat_t, r *ssiv1.FsRequest, link string) bool {
	if st.Mode&unix.S_IFMT != r.Mode&unix.S_IFMT {
		return false
	}
	switch r.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		dfd, name, err := s.parent(rel)
		if err != nil {
			return false
		}
		defer unix.Close(dfd)
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(dfd, name, buf)
		return err == nil && string(buf[:n]) == string(r.Path2)
	case unix.S_IFCHR, unix.S_IFBLK:
		return uint32(st.Rdev) == r.Rdev
	}
	if link != "" {
		o, err := s.lstat(link)
		return err == nil && o.Ino == st.Ino
	}
	return true
}

// makeLike creates rel as the server's file is (link: a name of the same
// file made earlier in this copy).
func (s *Server) makeLike(rel string, r *ssiv1.FsRequest, link string) error {
	if rel == "" {
		return nil
	}
	dfd, name, err := s.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if link != "" {
		ofd, oname, err := s.parent(link)
		if err != nil {
			return err
		}
		defer unix.Close(ofd)
		return unix.Linkat(ofd, oname, dfd, name, 0)
	}
	switch r.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.Mkdirat(dfd, name, 0o700)
	case unix.S_IFLNK:
		return unix.Symlinkat(string(r.Path2), dfd, name)
	case unix.S_IFREG:
		fd, err := unix.Openat(dfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
		if err == nil {
			unix.Close(fd)
		}
		return err
	default:
		return unix.Mknodat(dfd, name, r.Mode, int(r.Rdev))
	}
}

// own gives rel the server's owner and mode.
func (s *Server) own(rel string, r *ssiv1.FsRequest) error {
	if rel == "" {
		if err := unix.Fchownat(s.rootFd, "", int(r.Set.Uid), int(r.Set.Gid), unix.AT_EMPTY_PATH); err != nil {
			return err
		}
		return unix.Fchmodat(s.rootFd, ".", r.Mode&0o7777, 0)
	}
	dfd, name, err := s.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Fchownat(dfd, name, int(r.Set.Uid), int(r.Set.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if r.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	return s.chmod(rel, r.Mode&0o7777)
}

// times gives rel the server's access and change times.
func (s *Server) times(rel string, set *ssiv1.FsSetAttr) error {
	ts := []unix.Timespec{unix.NsecToTimespec(set.AtimeNs), unix.NsecToTimespec(set.MtimeNs)}
	if rel == "" {
		return unix.UtimesNanoAt(s.rootFd, "", ts, unix.AT_EMPTY_PATH)
	}
	dfd, name, err := s.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return unix.UtimesNanoAt(dfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// removeAll removes rel and everything below it.
func (s *Server) removeAll(rel string) error {
	dfd, _, err := s.parent(rel) // checks that no symlink leads elsewhere
	if err != nil {
		return err
	}
	unix.Close(dfd)
	return os.RemoveAll(filepath.Join(s.root, rel))
}

func (x *session) syncData(rel string, r *ssiv1.FsRequest) error {
	cs := x.sync
	if cs == nil || cs.fd < 0 || cs.path != rel {
		return unix.EBADF
	}
	if _, err := pwriteFull(cs.fd, r.Data, r.Offset); err != nil {
		return err
	}
	if r.Flags&1 == 0 {
		return nil
	}
	x.endCopy()
	if r.Set == nil {
		return nil
	}
	return x.srv.times(rel, r.Set)
}

// syncEnd removes what the server did not name, and the data the copy
// wrote reaches the disk.
func (x *session) syncEnd() error {
	cs := x.sync
	if cs == nil {
		return unix.EINVAL
	}
	x.endCopy()
	s := x.srv
	var extra []string
	err := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(s.root, p)
		if rel == "." {
			return nil
		}
		if _, cerr := s.clean(rel); cerr != nil {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err != nil {
			return nil
		}
		if !cs.seen[rel] {
			extra = append(extra, rel)
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, rel := range extra {
		if err := s.removeAll(rel); err != nil {
			return err
		}
	}
	x.sync = nil
	unix.Sync() // the copy is the replica's promise: on its disk before it is counted on
	return nil
}
