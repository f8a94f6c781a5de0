package cfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
)

// record is a stand-in for the cluster state's record, compared and
// swapped as the state machine does.
type record struct {
	mu  sync.Mutex
	cur state.CFS
	log []state.CFS
}

func (r *record) get() state.CFS {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *record) apply(_ context.Context, cmd state.SetCFS) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cmd.Expect != nil && *cmd.Expect != r.cur {
		return fmt.Errorf("conflict: record is %+v, not %+v", r.cur, *cmd.Expect)
	}
	r.cur = cmd.CFS
	r.log = append(r.log, cmd.CFS)
	return nil
}

// dialCopies opens a replication session with a Server of this process.
func dialCopies(s *Server, self uint32, deliver func(*ssiv1.FsMessage)) (link, error) {
	x, err := s.open(self, func(m *ssiv1.FsMessage) error { deliver(m); return nil }, true)
	if err != nil {
		return nil, err
	}
	return &localLink{x: x, slots: make(chan struct{}, inFlight)}, nil
}

// replicated is a serving node (1) with a replica (2), both in this
// process, and a mount that follows whichever serves.
type replicated struct {
	primary, replica *Server
	pexport, rexport string
	rec              *record
	rp               *replicator
	stop             func()
	cl               *Client
	mu               sync.Mutex
	serving          *Server
	cut              chan struct{} // closed: the replica refuses the server's session
	dir              string
}

func startReplicated(t *testing.T, prepare func(pexport, rexport string)) *replicated {
	t.Helper()
	dir := mountDir(t)
	r := &replicated{pexport: filepath.Join(dir, "export1"), rexport: filepath.Join(dir, "export2"), rec: &record{cur: state.CFS{Server: 1, Replica: 2}}}
	for _, d := range []string{r.pexport, r.rexport} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if prepare != nil {
		prepare(r.pexport, r.rexport)
	}
	var err error
	if r.primary, err = NewServer(ServerConfig{Export: r.pexport}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.primary.Close)
	if r.replica, err = NewServer(ServerConfig{Export: r.rexport, IDsFile: filepath.Join(dir, "state", "cfs-ids")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.replica.Close)
	r.replica.setRole(roleReplica, 1, 0)
	r.serving = r.primary
	r.startReplicator(t)
	r.dir = dir
	r.cl = r.mount(t, 3, "gamma")
	return r
}

// mount is a client node that follows whichever node serves.
func (r *replicated) mount(t *testing.T, self uint32, name string) *Client {
	t.Helper()
	cl, err := Mount(context.Background(), ClientConfig{Self: self, Name: name, Mount: filepath.Join(r.dir, name), Failure: func() time.Duration { return 3 * time.Second }, CacheTimeout: testCacheTimeout,
		Target: func() (uint32, *Server) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.serving == r.primary {
				return 1, r.primary
			}
			return 2, r.replica
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func (r *replicated) startReplicator(t *testing.T) {
	r.cut = make(chan struct{})
	cut := r.cut
	r.rp = &replicator{
		srv: r.primary, to: 2, self: 1, record: r.rec.get, apply: r.rec.apply, log: slog.Default(), pending: map[uint64]chan *ssiv1.FsMessage{},
		dial: func(ctx context.Context, deliver func(*ssiv1.FsMessage)) (link, error) {
			select {
			case <-cut:
				return nil, errors.New("cut")
			default:
			}
			return dialCopies(r.replica, 1, deliver)
		},
	}
	r.primary.changing.Lock()
	r.primary.repl.Store(r.rp)
	r.primary.changing.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.rp.run(ctx) }()
	r.stop = func() { cancel(); <-done }
	t.Cleanup(r.stop)
}

func (r *replicated) at(rel string) string { return filepath.Join(r.cl.c.Mount, rel) }

func (r *replicated) waitSynced(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !r.rec.get().Synced {
		if time.Now().After(deadline) {
			t.Fatalf("the replica was never recorded in sync: %+v", r.rec.get())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tree describes every file below root: type, mode, owner, size, data or
// link target, xattrs, and which names are the same file.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s %o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" size=%d data=%q blocks<=%d", st.Size, shorten(b), (st.Size+511)/512+8)
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					line += " same-as=" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
			buf := make([]byte, 256)
			if n, err := unix.Lgetxattr(p, "user.colour", buf); err == nil {
				line += " colour=" + string(buf[:n])
			}
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			line += " -> " + target
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func shorten(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("%s...(%d bytes, sha256 %x)", b[:32], len(b), sha256.Sum256(b))
	}
	return string(b)
}

func sameTrees(t *testing.T, what string, a, b string) {
	t.Helper()
	ta, tb := tree(t, a), tree(t, b)
	if strings.Join(ta, "\n") != strings.Join(tb, "\n") {
		t.Fatalf("%s: the replica differs from the server\nserver:\n%s\nreplica:\n%s", what, strings.Join(ta, "\n"), strings.Join(tb, "\n"))
	}
}

// A replica is first made a full copy (what it had that the server has
// not goes; holes stay holes; hard links stay links), then takes every
// change before the client gets its answer; the files keep the ids
// clients know them by; when the server is lost the mount follows the
// replica and a file open for writing goes on being written.
func TestReplicaTakesEveryChangeAndTakesOver(t *testing.T) {
	r := startReplicated(t, func(p, rx string) {
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.MkdirAll(filepath.Join(p, "dir/sub"), 0o750))
		must(os.WriteFile(filepath.Join(p, "dir/data"), bytes.Repeat([]byte("abcdefgh"), 300_000), 0o640))
		must(os.Symlink("../elsewhere", filepath.Join(p, "dir/link")))
		must(os.Link(filepath.Join(p, "dir/data"), filepath.Join(p, "hard")))
		must(unix.Mkfifo(filepath.Join(p, "fifo"), 0o600))
		must(unix.Lsetxattr(filepath.Join(p, "dir/data"), "user.colour", []byte("blue"), 0))
		f, err := os.Create(filepath.Join(p, "sparse"))
		must(err)
		_, err = f.WriteAt([]byte("end"), 64<<20)
		must(err)
		f.Close()
		must(os.Chown(filepath.Join(p, "dir/sub"), 1234, 5678))
		// The replica has stale things: they must go or be replaced.
		must(os.MkdirAll(filepath.Join(rx, "old/deeper"), 0o755))
		must(os.WriteFile(filepath.Join(rx, "old/deeper/x"), []byte("stale"), 0o644))
		must(os.WriteFile(filepath.Join(rx, "dir"), []byte("a file where the server has a directory"), 0o644))
	})
	r.waitSynced(t)
	sameTrees(t, "after the full copy", r.pexport, r.rexport)
	var sp unix.Stat_t
	if err := unix.Stat(filepath.Join(r.rexport, "sparse"), &sp); err != nil || sp.Blocks > 64 {
		t.Errorf("the sparse file's copy is not sparse: %d blocks, %v", sp.Blocks, err)
	}

	// Changes through the mount.
	open, err := os.OpenFile(r.at("dir/open"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if _, err := open.WriteAt([]byte("before the failover;"), 0); err != nil {
		t.Fatal(err)
	}
	if err := open.Sync(); err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { return os.WriteFile(r.at("new"), []byte("new file"), 0o600) },
		func() error { return os.Mkdir(r.at("dir/made"), 0o711) },
		func() error { return os.Rename(r.at("new"), r.at("dir/made/renamed")) },
		func() error { return os.Remove(r.at("hard")) },
		func() error { return os.Chmod(r.at("dir/data"), 0o604) },
		func() error { return os.Truncate(r.at("dir/data"), 1000) },
		func() error { return os.Symlink("target", r.at("dir/made/sym")) },
		func() error { return os.Link(r.at("dir/made/renamed"), r.at("second")) },
		func() error { return unix.Setxattr(r.at("second"), "user.colour", []byte("red"), 0) },
		func() error {
			f, err := os.OpenFile(r.at("appended"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return err
			}
			defer f.Close()
			for i := range 50 {
				if _, err := fmt.Fprintf(f, "line %d\n", i); err != nil {
					return err
				}
			}
			return f.Sync()
		},
		func() error { return os.RemoveAll(r.at("dir/sub")) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	sameTrees(t, "after the changes", r.pexport, r.rexport)

	// Ids: every file has, on the replica, the id it has on the server.
	ids := map[string]uint64{}
	err = filepath.WalkDir(r.pexport, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(r.pexport, p)
		var a, b unix.Stat_t
		if err := unix.Lstat(p, &a); err != nil {
			return err
		}
		if err := unix.Lstat(filepath.Join(r.rexport, rel), &b); err != nil {
			return err
		}
		if ia, ib := r.primary.fileID(&a), r.replica.fileID(&b); ia != ib {
			t.Errorf("%s: id %d on the server, %d on the replica", rel, ia, ib)
		}
		var m unix.Stat_t
		if err := unix.Lstat(r.at(rel), &m); err == nil {
			ids[rel] = m.Ino
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The server is lost: the replica takes over (as the leader would
	// record), the mount follows it.
	r.takeOver(t)

	if _, err := open.WriteAt([]byte("after it"), 20); err != nil {
		t.Fatalf("writing a file opened before the failover: %v", err)
	}
	if err := open.Sync(); err != nil {
		t.Fatalf("fsync after the failover: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(r.rexport, "dir/open"))
	if err != nil || string(b) != "before the failover;after it" {
		t.Fatalf("the new server's copy of the open file: %q, %v", b, err)
	}
	for rel, ino := range ids {
		var m unix.Stat_t
		if err := unix.Lstat(r.at(rel), &m); err != nil {
			t.Fatalf("%s after the failover: %v", rel, err)
		}
		if m.Ino != ino {
			t.Errorf("%s: inode %d before the failover, %d after", rel, ino, m.Ino)
		}
	}
	// New files get ids of their own, not those of existing files.
	if err := os.WriteFile(r.at("after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var m unix.Stat_t
	if err := unix.Lstat(r.at("after"), &m); err != nil {
		t.Fatal(err)
	}
	for rel, ino := range ids {
		if ino == m.Ino {
			t.Errorf("a file made after the failover has the id of %s (%d)", rel, ino)
		}
	}
}

// When the replica stops taking copies, the server records it out of
// sync before it acknowledges the next change, goes on serving, and
// copies everything again once the replica is back.
func TestReplicaLossIsRecordedBeforeTheNextAcknowledgement(t *testing.T) {
	r := startReplicated(t, nil)
	r.waitSynced(t)
	if err := os.WriteFile(r.at("a"), []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The replica goes away and refuses to come back for now.
	close(r.cut)
	r.replica.setRole(roleIdle, 0, 0)
	if err := os.WriteFile(r.at("b"), []byte("two"), 0o644); err != nil {
		t.Fatalf("a change while the replica is away: %v", err)
	}
	if rec := r.rec.get(); rec.Synced {
		t.Fatalf("a change was acknowledged while the record still counts on the replica: %+v", rec)
	}
	if _, err := os.Stat(filepath.Join(r.rexport, "b")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the replica got a change after it went away: %v", err)
	}
	// Back: a full copy brings it up to date.
	r.stop()
	r.replica.setRole(roleReplica, 1, 0)
	r.startReplicator(t)
	r.waitSynced(t)
	sameTrees(t, "after the replica came back", r.pexport, r.rexport)
	if got := r.rec.log; len(got) < 3 || got[0].Synced != true || got[1].Synced != false || !got[len(got)-1].Synced {
		t.Errorf("the record's history: %+v", got)
	}
}

// The replication session is only for the serving node, and a replica
// serves nobody else.
func TestReplicaAdmitsOnlyItsServer(t *testing.T) {
	dir := t.TempDir()
	s, err := NewServer(ServerConfig{Export: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nop := func(*ssiv1.FsMessage) error { return nil }
	if _, err := s.open(2, nop, true); err == nil {
		t.Error("a serving node took another node's copies")
	}
	s.setRole(roleReplica, 1, 0)
	if _, err := s.open(3, nop, false); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Errorf("a replica served a client: %v", err)
	}
	if _, err := s.open(4, nop, true); err == nil {
		t.Error("a replica took copies from a node that does not serve")
	}
	x, err := s.open(1, nop, true)
	if err != nil {
		t.Fatalf("the replica refused its server: %v", err)
	}
	// A copy that escapes the export is refused like any request.
	m := x.serve(context.Background(), &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_PUT, Path: []byte("../x"), Mode: unix.S_IFREG | 0o644, Set: &ssiv1.FsSetAttr{}})
	if syscall.Errno(m.Errno) != syscall.EINVAL {
		t.Errorf("a copy outside the export: errno %v", syscall.Errno(m.Errno))
	}
	m = x.serve(context.Background(), &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_SYNC_PUT, Path: []byte("x"), Mode: unix.S_IFREG | 0o644, Set: &ssiv1.FsSetAttr{}})
	if syscall.Errno(m.Errno) != syscall.EINVAL {
		t.Errorf("a copy outside a full copy: errno %v", syscall.Errno(m.Errno))
	}
	s.setRole(roleServe, 0, 1)
	select {
	case <-x.done:
	case <-time.After(time.Second):
		t.Error("the replication session outlived the replica's role")
	}
}

// takeOver loses the server: the replica serves (as the leader would
// record it), and the mounts follow it.
func (r *replicated) takeOver(t *testing.T, mounts ...*Client) {
	t.Helper()
	r.stop()
	r.primary.setRole(roleIdle, 0, 0)
	if err := r.rec.apply(context.Background(), state.SetCFS{CFS: state.CFS{Server: 2, Replica: 1, Failovers: 1}}); err != nil {
		t.Fatal(err)
	}
	r.replica.setRole(roleServe, 0, 1)
	r.mu.Lock()
	r.serving = r.replica
	r.mu.Unlock()
	for _, cl := range append([]*Client{r.cl}, mounts...) {
		cl.Drop()
	}
}

// The locks a node held are its again on the server that took over: the
// mount takes them again, and the new server holds other nodes' requests
// back until it has.
func TestLocksAreTakenAgainAfterATakeover(t *testing.T) {
	r := startReplicated(t, nil)
	r.waitSynced(t)
	b := r.mount(t, 4, "delta")
	if err := os.WriteFile(r.at("lk"), []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	fa, err := os.OpenFile(r.at("lk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.OpenFile(filepath.Join(b.c.Mount, "lk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	wr := unix.Flock_t{Type: unix.F_WRLCK, Start: 2, Len: 3}
	if err := unix.FcntlFlock(fa.Fd(), unix.F_SETLK, &wr); err != nil {
		t.Fatal(err)
	}
	flk, err := os.Open(r.at("lk"))
	if err != nil {
		t.Fatal(err)
	}
	defer flk.Close()
	if err := unix.Flock(int(flk.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	// A range locked and unlocked again is not taken again.
	tmp := unix.Flock_t{Type: unix.F_WRLCK, Start: 8, Len: 1}
	if err := unix.FcntlFlock(fa.Fd(), unix.F_SETLK, &tmp); err != nil {
		t.Fatal(err)
	}
	tmp.Type = unix.F_UNLCK
	if err := unix.FcntlFlock(fa.Fd(), unix.F_SETLK, &tmp); err != nil {
		t.Fatal(err)
	}

	r.replica.graceFor = 3 * time.Second
	r.takeOver(t, b)
	if err := unix.FcntlFlock(fb.Fd(), unix.F_SETLK, &wr); err != unix.EAGAIN && err != unix.EACCES {
		t.Fatalf("after the takeover another node took the lock a node held: %v", err)
	}
	if err := unix.Flock(int(fb.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("after the takeover another node took an exclusive flock beside a shared one: %v", err)
	}
	free := unix.Flock_t{Type: unix.F_WRLCK, Start: 8, Len: 1}
	if err := unix.FcntlFlock(fb.Fd(), unix.F_SETLK, &free); err != nil {
		t.Fatalf("a range unlocked before the takeover is not free after it: %v", err)
	}
	wr.Type = unix.F_UNLCK
	if err := unix.FcntlFlock(fa.Fd(), unix.F_SETLK, &wr); err != nil {
		t.Fatal(err)
	}
	wr.Type = unix.F_WRLCK
	if err := unix.FcntlFlock(fb.Fd(), unix.F_SETLK, &wr); err != nil {
		t.Fatalf("the lock once released: %v", err)
	}
}

// A server that took over keeps its files' ids across a restart of its
// daemon (ids.go): without them a file would come back under its own
// inode number, which may be the id a client holds for another file.
func TestFileIDsSurviveARestartAfterATakeover(t *testing.T) {
	r := startReplicated(t, func(p, _ string) {
		for _, n := range []string{"a", "b", "c"} {
			if err := os.WriteFile(filepath.Join(p, n), []byte(n), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	idsFile := filepath.Join(r.dir, "state", "cfs-ids") // startReplicated's
	r.waitSynced(t)
	r.takeOver(t)
	if _, err := os.Stat(idsFile); err != nil {
		t.Fatalf("the takeover did not keep the ids: %v", err)
	}
	if err := os.WriteFile(r.at("made-after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(r.at("b")); err != nil { // its alias must not come back
		t.Fatal(err)
	}
	ino := func(rel string) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(r.at(rel), &st); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		return st.Ino
	}
	before := map[string]uint64{}
	for _, n := range []string{"a", "c", "made-after"} {
		before[n] = ino(n)
	}
	var bStat unix.Stat_t
	if err := unix.Lstat(filepath.Join(r.pexport, "b"), &bStat); err != nil {
		t.Fatal(err)
	}
	removedID := bStat.Ino // b's id: the old server's inode number

	// The daemon restarts: a new Server on the same export and data.
	old := r.replica
	restarted, err := NewServer(ServerConfig{Export: r.rexport, IDsFile: idsFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restarted.Close)
	restarted.setRole(roleServe, 0, 1)
	r.mu.Lock()
	r.replica = restarted
	r.mu.Unlock()
	old.Close()
	r.cl.Drop()
	// Whatever the kernel kept expires: what follows is the new server's.
	time.Sleep(testCacheTimeout + 300*time.Millisecond)
	for n, want := range before {
		if got := ino(n); got != want {
			t.Errorf("%s: id %d before the restart, %d after", n, want, got)
		}
	}
	// A new file, even one that reuses b's inode number here, has neither
	// a kept id nor the removed file's.
	for i := range 20 {
		n := fmt.Sprintf("new%d", i)
		if err := os.WriteFile(r.at(n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		got := ino(n)
		for m, id := range before {
			if got == id {
				t.Errorf("%s got the id of %s (%d)", n, m, id)
			}
		}
		if got == removedID {
			t.Errorf("%s got the removed file's id %d", n, got)
		}
	}
	// A full copy to this node again (it becomes a replica) forgets them.
	restarted.forgetIDs()
	if _, err := os.Stat(idsFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the kept ids outlived a full copy: %v", err)
	}
}
