package cfs

import (
	"context"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// Limits of what a client may ask for.
const (
	maxPath     = 64 << 10 // a path from the export's root (deeper than PATH_MAX is legal)
	maxName     = 255      // NAME_MAX
	maxIO       = 1 << 20  // one READ or WRITE
	maxXattr    = 64 << 10
	dirPage     = 2048 // entries per READDIR answer
	maxSessions = 256
)

// AckTimeout is how long the server waits for a caching node to confirm an
// invalidation before it ends that node's session (which makes the node
// drop its whole cache before it serves anything again).
const AckTimeout = 2 * time.Second

// DefaultExcludes are never exported when the export is the machine's /.
var DefaultExcludes = []string{"proc", "sys", "dev", "run"}

// Server exports one directory tree to the cluster's nodes.
type Server struct {
	root    string
	rootFd  int
	rootDev uint64
	rootIno uint64
	exclude map[string]bool // cleaned relative paths hidden from clients
	log     *slog.Logger

	requests [64]atomic.Uint64        // served, by operation
	latency  [64]prometheus.Histogram // time to serve, by operation (metrics.go)

	mu       sync.Mutex
	sessions map[*session]struct{}
	invalSeq atomic.Uint64
	closed   bool

	// Replication (replica.go).
	role       atomic.Int32  // what the server does now (roleServe unless told)
	primary    atomic.Uint32 // on a replica: the node whose copies it takes
	sessionSeq atomic.Uint64
	repl       atomic.Pointer[replicator] // serving with a replica: its link
	changing   sync.RWMutex               // held by changes; setting repl waits for them
	aliasMu    sync.RWMutex
	// alias: the id clients know a file by, by its inode here, when this
	// export is a copy (its server said which id each file has); own ids
	// of files made here after a takeover carry ownGen.
	alias  map[uint64]uint64
	ownGen atomic.Uint64
	// idsFile keeps the aliases across restarts (ids.go); goneLog appends
	// the removed ones.
	idsFile string
	goneMu  sync.Mutex
	goneLog *os.File
	// graceUntil: until then (Unix nanoseconds) lock requests that are not
	// reclaims wait (reclaim.go).
	graceUntil atomic.Int64
	graceFor   time.Duration // the grace period of a takeover (0: none)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	Export string // the directory exported (created if missing)
	// Exclude are absolute paths never exported: ssi's own state, the
	// daemon's socket and binary directories. Those below Export are hidden.
	Exclude []string
	// IDsFile is where a server serving a copy keeps its files' ids across
	// restarts (ids.go; "": not kept).
	IDsFile string
	Log     *slog.Logger
}

// NewServer opens the export.
func NewServer(c ServerConfig) (*Server, error) {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	root, err := filepath.Abs(c.Export)
	if err != nil {
		return nil, fmt.Errorf("cluster filesystem export %q: %w", c.Export, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("cluster filesystem export: %w", err)
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cluster filesystem export %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("cluster filesystem export %s: %w", root, err)
	}
	s := &Server{root: root, rootFd: fd, rootDev: st.Dev, rootIno: st.Ino, exclude: map[string]bool{}, log: c.Log, sessions: map[*session]struct{}{}}
	s.initLatency()
	s.idsFile = c.IDsFile
	if err := s.loadIDs(); err != nil {
		s.log.Error("the cluster filesystem's kept file ids cannot be used; files served from this copy get new ids", "err", err)
	}
	excl := append([]string(nil), c.Exclude...)
	if root == "/" {
		for _, d := range DefaultExcludes {
			excl = append(excl, "/"+d)
		}
	}
	for _, e := range excl {
		if e == "" {
			continue
		}
		abs, err := filepath.Abs(e)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(root, abs); err == nil && rel != "." && !strings.HasPrefix(rel, "..") {
			s.exclude[rel] = true
		}
	}
	return s, nil
}

// Requests counts the requests of one operation served so far.
func (s *Server) Requests(op ssiv1.FsOp) uint64 {
	if op < 0 || int(op) >= len(s.requests) {
		return 0
	}
	return s.requests[op].Load()
}

// Root is the exported directory.
func (s *Server) Root() string { return s.root }

// Close ends every session and closes the export.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	ss := make([]*session, 0, len(s.sessions))
	for x := range s.sessions {
		ss = append(ss, x)
	}
	s.mu.Unlock()
	for _, x := range ss {
		x.end(errors.New("the server is stopping"))
	}
	unix.Close(s.rootFd)
	s.goneMu.Lock()
	if s.goneLog != nil {
		s.goneLog.Close()
		s.goneLog = nil
	}
	s.goneMu.Unlock()
}

// EndNode ends the sessions of one node (it went DOWN): its open files
// close and its locks are released.
func (s *Server) EndNode(num uint32) {
	s.mu.Lock()
	var ss []*session
	for x := range s.sessions {
		if x.node == num {
			ss = append(ss, x)
		}
	}
	s.mu.Unlock()
	for _, x := range ss {
		x.end(fmt.Errorf("node %d is down", num))
	}
}

// Sessions counts the open sessions (for tests and status).
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// sender delivers messages to one client, in order.
type sender func(*ssiv1.FsMessage) error

// open starts a session for a client node; send is called for every answer
// and pushed invalidation, one at a time.
func (s *Server) open(node uint32, send sender, copies bool) (*session, error) {
	x := &session{
		srv: s, node: node, send: send, id: s.sessionSeq.Add(1), copies: copies,
		handles:  map[uint64]*handle{},
		interest: map[uint64]struct{}{},
		locks:    map[lockKey]int{},
		acks:     map[uint64]chan struct{}{},
		cancels:  map[uint64]context.CancelFunc{},
		done:     make(chan struct{}),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("the cluster filesystem server is stopping")
	}
	if err := s.admits(node, copies); err != nil {
		return nil, err
	}
	if len(s.sessions) >= maxSessions {
		return nil, fmt.Errorf("too many cluster filesystem sessions (%d)", maxSessions)
	}
	s.sessions[x] = struct{}{}
	return x, nil
}

func (s *Server) drop(x *session) {
	s.mu.Lock()
	delete(s.sessions, x)
	s.mu.Unlock()
}

// others are the sessions but one.
func (s *Server) others(self *session) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for x := range s.sessions {
		if x != self {
			out = append(out, x)
		}
	}
	return out
}

// fileID is the identity a client sees: the inode number, with the device
// folded in for files on other filesystems below the export.
func (s *Server) fileID(st *unix.Stat_t) uint64 {
	if st.Dev == s.rootDev {
		if id, ok := s.aliasOf(st.Ino); ok {
			return id
		}
		if g := s.ownGen.Load(); g != 0 {
			// This export was another server's copy: its own inode numbers
			// could be ids clients already know other files by.
			return 1<<62 | (g&0x3fff)<<48 | st.Ino&(1<<48-1)
		}
	}
	if st.Dev == s.rootDev && (st.Ino == s.rootIno || (st.Ino != 1 && st.Ino != ^uint64(0))) {
		// 1 is the kernel's number of a FUSE root, and ^0 go-fuse's own:
		// another file with either gets a number of its own below.
		return st.Ino
	}
	h := fnv.New64a()
	var b [16]byte
	for i := range 8 {
		b[i] = byte(st.Dev >> (8 * i))
		b[8+i] = byte(st.Ino >> (8 * i))
	}
	h.Write(b[:])
	return h.Sum64() | 1<<63
}

func (s *Server) attr(st *unix.Stat_t) *ssiv1.FsAttr {
	return &ssiv1.FsAttr{
		Ino: s.fileID(st), Mode: st.Mode, Nlink: uint32(st.Nlink), Uid: st.Uid, Gid: st.Gid, Rdev: uint32(st.Rdev),
		Size: uint64(st.Size), Blocks: uint64(st.Blocks), Blksize: uint32(st.Blksize),
		AtimeNs: st.Atim.Nano(), MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano(),
	}
}

// clean checks a client's path: relative, no "." or ".." or empty
// components, names within NAME_MAX, not excluded. "" is the root.
func (s *Server) clean(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if len(p) > maxPath || strings.IndexByte(p, 0) >= 0 || p[0] == '/' {
		return "", unix.EINVAL
	}
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "" || c == "." || c == "..":
			return "", unix.EINVAL
		case len(c) > maxName:
			return "", unix.ENAMETOOLONG
		}
	}
	if len(s.exclude) > 0 {
		for q := p; q != "."; q = filepath.Dir(q) {
			if s.exclude[q] {
				return "", unix.ENOENT
			}
		}
	}
	return p, nil
}

// resolveHow never leaves the export and never follows a symlink: a client
// names real directories it looked up, so a symlink in the way is a race
// or an attack.
var resolveHow = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// openAt opens rel (cleaned) beneath the export. A path longer than the
// kernel takes at once (PATH_MAX) is walked a piece at a time, each piece
// beneath the directory the last one reached.
func (s *Server) openAt(rel string, flags int, mode uint32) (int, error) {
	if rel == "" {
		rel = "."
	}
	dir := s.rootFd
	for len(rel) >= unix.PathMax {
		cut := strings.LastIndexByte(rel[:unix.PathMax-1], '/')
		if cut <= 0 {
			return -1, unix.ENAMETOOLONG
		}
		fd, err := openat2(dir, rel[:cut], unix.O_PATH|unix.O_DIRECTORY, 0)
		if dir != s.rootFd {
			unix.Close(dir)
		}
		if err != nil {
			return -1, err
		}
		dir, rel = fd, rel[cut+1:]
	}
	fd, err := openat2(dir, rel, flags, mode)
	if dir != s.rootFd {
		unix.Close(dir)
	}
	return fd, err
}

func openat2(dir int, rel string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat2(dir, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: uint64(resolveHow)})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
}

// parent opens the directory holding rel and returns its last component.
func (s *Server) parent(rel string) (dirfd int, name string, err error) {
	if rel == "" {
		return -1, "", unix.EINVAL // the root has no parent in the export
	}
	dir, name := filepath.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	fd, err := s.openAt(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, name, err
}

// parentStat is parent, with the directory's own attributes.
func (s *Server) parentStat(rel string) (dirfd int, name string, st *unix.Stat_t, err error) {
	if dirfd, name, err = s.parent(rel); err != nil {
		return -1, "", nil, err
	}
	st = new(unix.Stat_t)
	if err := unix.Fstat(dirfd, st); err != nil {
		unix.Close(dirfd)
		return -1, "", nil, err
	}
	return dirfd, name, st, nil
}

// lstat stats rel without following a final symlink.
func (s *Server) lstat(rel string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if rel == "" {
		return &st, unix.Fstat(s.rootFd, &st)
	}
	dfd, name, err := s.parent(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	return &st, nil
}
