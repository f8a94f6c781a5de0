package cfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A server that took over serves a copy whose files clients know by the
// old server's ids (its aliases, replica.go). Those are in memory only
// while it replicates; when it starts serving, it writes them to its
// IDsFile (in the daemon's data directory, never in the export), so that
// after its daemon restarts every file keeps its id. Without that, a file
// would come back under its inode number here, which may be the id a
// client's kernel still holds for another file (an open one, a working
// directory): the kernel would take one for the other.
//
// The file is written whole, atomically, at the takeover and again at each
// start that loads it (which also compacts it); a removed file's inode
// number is appended to IDsFile+".gone" (its number may be reused, and
// must not inherit the alias). A full copy (the node becomes a replica
// again) removes both. Files made after the takeover need nothing: their
// ids come from their inode number and the record's failover count.

// idsMagic starts the file: "ssi-cfs-ids" and a format version.
var idsMagic = [16]byte{'s', 's', 'i', '-', 'c', 'f', 's', '-', 'i', 'd', 's', 0, 0, 0, 0, 1}

// saveIDs writes the aliases whole, if there is a file to keep them in.
func (s *Server) saveIDs() error {
	if s.idsFile == "" {
		return nil
	}
	s.aliasMu.RLock()
	b := make([]byte, 0, 32+16*len(s.alias))
	b = append(b, idsMagic[:]...)
	b = binary.LittleEndian.AppendUint64(b, s.rootDev)
	b = binary.LittleEndian.AppendUint64(b, s.rootIno)
	for ino, id := range s.alias {
		b = binary.LittleEndian.AppendUint64(b, ino)
		b = binary.LittleEndian.AppendUint64(b, id)
	}
	s.aliasMu.RUnlock()
	if err := os.MkdirAll(filepath.Dir(s.idsFile), 0o700); err != nil {
		return fmt.Errorf("keep the cluster filesystem's file ids: %w", err)
	}
	tmp := s.idsFile + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("keep the cluster filesystem's file ids: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.idsFile)
	}
	if err == nil {
		err = syncDir(filepath.Dir(s.idsFile))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("keep the cluster filesystem's file ids in %s: %w", s.idsFile, err)
	}
	s.goneMu.Lock()
	defer s.goneMu.Unlock()
	if s.goneLog != nil {
		s.goneLog.Close()
	}
	s.goneLog, err = os.OpenFile(s.idsFile+".gone", os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		s.goneLog = nil
		return fmt.Errorf("keep the cluster filesystem's removed files: %w", err)
	}
	return nil
}

// loadIDs reads what saveIDs wrote for this export (nothing if the file
// is missing or belongs to another directory).
func (s *Server) loadIDs() error {
	if s.idsFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.idsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the cluster filesystem's file ids: %w", err)
	}
	if len(b) < 32 || [16]byte(b[:16]) != idsMagic || (len(b)-32)%16 != 0 {
		return fmt.Errorf("%s is not a file of the cluster filesystem's ids (remove it, and give this node a full copy: ssi cfs replica)", s.idsFile)
	}
	if binary.LittleEndian.Uint64(b[16:]) != s.rootDev || binary.LittleEndian.Uint64(b[24:]) != s.rootIno {
		s.log.Warn("the kept file ids are of another export directory; not using them", "file", s.idsFile, "export", s.root)
		return nil
	}
	alias := make(map[uint64]uint64, (len(b)-32)/16)
	for p := b[32:]; len(p) >= 16; p = p[16:] {
		alias[binary.LittleEndian.Uint64(p)] = binary.LittleEndian.Uint64(p[8:])
	}
	if g, err := os.ReadFile(s.idsFile + ".gone"); err == nil {
		for ; len(g) >= 8; g = g[8:] {
			delete(alias, binary.LittleEndian.Uint64(g))
		}
	}
	s.aliasMu.Lock()
	s.alias = alias
	s.aliasMu.Unlock()
	return nil
}

// forgetIDs removes the kept ids (a full copy starts: the aliases are
// made anew).
func (s *Server) forgetIDs() {
	if s.idsFile == "" {
		return
	}
	s.goneMu.Lock()
	if s.goneLog != nil {
		s.goneLog.Close()
		s.goneLog = nil
	}
	s.goneMu.Unlock()
	os.Remove(s.idsFile)
	os.Remove(s.idsFile + ".gone")
}

// keptGone records that inode ino, which had an alias, was removed.
func (s *Server) keptGone(ino uint64) {
	s.goneMu.Lock()
	defer s.goneMu.Unlock()
	if s.goneLog == nil {
		return
	}
	if _, err := s.goneLog.Write(binary.LittleEndian.AppendUint64(nil, ino)); err != nil {
		s.log.Warn("cannot record a removed file's id; its inode number, if reused, may show a removed file's id after a restart", "err", err)
	}
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}
