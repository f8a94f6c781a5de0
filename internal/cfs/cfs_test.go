package cfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/peer/memnet"
)

// pair is a server and two client nodes in this process (the clients reach
// the server without a network; test/e2e has the multi-process tests).
type pair struct {
	srv    *Server
	export string
	a, b   *Client
}

// testCacheTimeout keeps the kernel's caches short, so a test can wait
// for an entry to expire.
const testCacheTimeout = time.Second

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

// mountDir is a temporary directory for mounts that other users reach
// (the test's temporary directories are 0700).
func mountDir(t *testing.T) string {
	t.Helper()
	needFUSE(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mountPair(t *testing.T) *pair {
	t.Helper()
	dir := mountDir(t)
	p := &pair{export: filepath.Join(dir, "export")}
	var err error
	p.srv, err = NewServer(ServerConfig{Export: p.export})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.srv.Close)
	mnt := func(num uint32, name string) *Client {
		c, err := Mount(context.Background(), ClientConfig{Self: num, Name: name, Mount: filepath.Join(dir, name), Server: 1, Local: p.srv, Failure: func() time.Duration { return 2 * time.Second }, CacheTimeout: testCacheTimeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	p.a = mnt(2, "alpha")
	p.b = mnt(3, "beta")
	return p
}

func (p *pair) at(c *Client, rel string) string { return filepath.Join(c.c.Mount, rel) }

func TestWriteOnOneNodeIsReadOnAnother(t *testing.T) {
	p := mountPair(t)
	fa, fb := p.at(p.a, "f"), p.at(p.b, "f")
	if err := os.WriteFile(fa, []byte("first version"), 0o644); err != nil {
		t.Fatal(err)
	}
	// b caches the file's pages and attributes...
	for range 3 {
		if got, err := os.ReadFile(fb); err != nil || string(got) != "first version" {
			t.Fatalf("read on b: %q, %v", got, err)
		}
	}
	// ...and still sees a's change the moment a's write returns.
	for i := range 50 {
		want := []byte(strings.Repeat("v", i+1))
		if err := os.WriteFile(fa, want, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(fb)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("round %d: b read %q (%v), a wrote %q", i, got, err, want)
		}
	}
	// The server's copy is the same.
	if got, _ := os.ReadFile(filepath.Join(p.export, "f")); len(got) != 50 {
		t.Fatalf("export holds %q", got)
	}
	// Once b's kernel has let its entry expire and looked the file up
	// again, the file is still one node to b, and a's writes still reach it.
	for i := range 3 {
		time.Sleep(testCacheTimeout + 200*time.Millisecond) // the kernel looks the file up again
		if _, err := os.ReadFile(fb); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("after expiry %d", i)
		if err := os.WriteFile(fa, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(fb); err != nil || string(got) != want {
			t.Fatalf("b read %q (%v) after its entry expired, a wrote %q", got, err, want)
		}
	}
}

func TestNamesChangeEverywhere(t *testing.T) {
	p := mountPair(t)
	if err := os.MkdirAll(p.at(p.a, "d/e"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.at(p.b, "d/x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat missing: %v", err) // b now caches "d/x does not exist"
	}
	if err := os.WriteFile(p.at(p.a, "d/x"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p.at(p.b, "d/x")); err != nil || string(b) != "x" {
		t.Fatalf("b after create on a: %q %v", b, err)
	}
	if err := os.Rename(p.at(p.a, "d/x"), p.at(p.a, "d/e/y")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.at(p.b, "d/x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("b still sees the old name: %v", err)
	}
	if err := os.Symlink("e/y", p.at(p.b, "d/link")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p.at(p.a, "d/link")); err != nil || string(b) != "x" {
		t.Fatalf("a through b's symlink: %q %v", b, err)
	}
	if err := os.Link(p.at(p.a, "d/e/y"), p.at(p.a, "d/hard")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p.at(p.b, "d/e/y"), &st); err != nil || st.Nlink != 2 {
		t.Fatalf("b's link count %d %v", st.Nlink, err)
	}
	// Linux names are bytes, not UTF-8 text.
	odd := "caf\xe9-\xff"
	if err := os.WriteFile(p.at(p.a, "d/"+odd), []byte("latin-1"), 0o644); err != nil {
		t.Fatalf("a name that is not UTF-8: %v", err)
	}
	if b, err := os.ReadFile(p.at(p.b, "d/"+odd)); err != nil || string(b) != "latin-1" {
		t.Fatalf("b reads the non-UTF-8 name: %q %v", b, err)
	}
	ents, err := os.ReadDir(p.at(p.b, "d"))
	found := false
	for _, e := range ents {
		found = found || e.Name() == odd
	}
	if err != nil || !found {
		t.Fatalf("b's listing lacks the non-UTF-8 name: %v %v", ents, err)
	}
	if err := os.RemoveAll(p.at(p.b, "d")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.at(p.a, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a still sees d: %v", err)
	}
}

func TestOwnershipIsTheCallers(t *testing.T) {
	p := mountPair(t)
	if err := os.Mkdir(p.at(p.a, "pub"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p.at(p.a, "pub"), 0o777); err != nil {
		t.Fatal(err)
	}
	// A file made by another user (through a real process running as
	// nobody) belongs to that user, and root's mode bits hold against them.
	nobody := "65534"
	out, err := runAs(nobody, "sh", "-c", "echo hi > "+p.at(p.b, "pub/n")+" && cat "+p.at(p.b, "pub/n"))
	if err != nil || out != "hi\n" {
		t.Fatalf("as nobody: %q %v", out, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(p.export, "pub/n"), &st); err != nil || st.Uid != 65534 {
		t.Fatalf("owner on the server: %d %v", st.Uid, err)
	}
	if err := os.WriteFile(p.at(p.a, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runAs(nobody, "cat", p.at(p.b, "secret")); err == nil {
		t.Fatalf("nobody read root's 0600 file: %q", out)
	}
}

func TestCDSLResolvesPerNode(t *testing.T) {
	p := mountPair(t)
	for _, n := range []string{"2", "3"} {
		if err := os.WriteFile(filepath.Join(p.export, "hostname.node"+n), []byte("node"+n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("hostname.node{nodenum}", filepath.Join(p.export, "hostname")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/var/log/{nodename}", filepath.Join(p.export, "log")); err != nil {
		t.Fatal(err)
	}
	for c, want := range map[*Client]string{p.a: "node2", p.b: "node3"} {
		if b, err := os.ReadFile(p.at(c, "hostname")); err != nil || string(b) != want {
			t.Fatalf("node %d reads %q (%v), want %q", c.c.Self, b, err, want)
		}
	}
	if l, err := os.Readlink(p.at(p.b, "log")); err != nil || l != "/var/log/beta" {
		t.Fatalf("readlink: %q %v", l, err)
	}
}

func TestLocksAreClusterWideAndDieWithTheirNode(t *testing.T) {
	p := mountPair(t)
	if err := os.WriteFile(p.at(p.a, "lk"), []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	fa, err := os.OpenFile(p.at(p.a, "lk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.OpenFile(p.at(p.b, "lk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	wr := unix.Flock_t{Type: unix.F_WRLCK, Start: 2, Len: 3}
	if err := unix.FcntlFlock(fa.Fd(), unix.F_SETLK, &wr); err != nil {
		t.Fatal(err)
	}
	if err := unix.FcntlFlock(fb.Fd(), unix.F_SETLK, &wr); err != unix.EAGAIN && err != unix.EACCES {
		t.Fatalf("b took a's lock: %v", err)
	}
	other := unix.Flock_t{Type: unix.F_WRLCK, Start: 5, Len: 1}
	if err := unix.FcntlFlock(fb.Fd(), unix.F_SETLK, &other); err != nil {
		t.Fatalf("b cannot lock a free range: %v", err)
	}
	q := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 0}
	if err := unix.FcntlFlock(fb.Fd(), unix.F_GETLK, &q); err != nil || q.Type != unix.F_WRLCK || q.Start != 2 || q.Len != 3 {
		t.Fatalf("b's F_GETLK: %+v %v", q, err)
	}
	if err := unix.Flock(int(fa.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(fb.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("b's flock beside a's: %v", err)
	}
	// b blocks for the lock; a's node goes away; b gets it.
	got := make(chan error, 1)
	go func() { got <- unix.FcntlFlock(fb.Fd(), unix.F_SETLKW, &wr) }()
	select {
	case err := <-got:
		t.Fatalf("b's blocking lock returned while a holds it: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	p.srv.EndNode(2)
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("b's blocking lock: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not get the lock after a's node was gone")
	}
	if err := unix.Flock(int(fb.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("b's flock after a's node went: %v", err)
	}
}

func TestBadPathsAreRefused(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	export := filepath.Join(dir, "export")
	srv, err := NewServer(ServerConfig{Export: export, Exclude: []string{filepath.Join(export, "state")}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := os.MkdirAll(filepath.Join(export, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "outside"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(export, "out")); err != nil {
		t.Fatal(err)
	}
	x, err := srv.open(9, func(*ssiv1.FsMessage) error { return nil }, false)
	if err != nil {
		t.Fatal(err)
	}
	defer x.end(errors.New("test over"))
	for _, c := range []struct {
		path string
		op   ssiv1.FsOp
		want unix.Errno
	}{
		{"../outside", ssiv1.FsOp_FS_OP_LOOKUP, unix.EINVAL},
		{"a/../../outside", ssiv1.FsOp_FS_OP_OPEN, unix.EINVAL},
		{"/etc/passwd", ssiv1.FsOp_FS_OP_OPEN, unix.EINVAL},
		{"out/outside", ssiv1.FsOp_FS_OP_OPEN, unix.ELOOP},
		{"out/outside", ssiv1.FsOp_FS_OP_LOOKUP, unix.ELOOP},
		{"out/new", ssiv1.FsOp_FS_OP_CREATE, unix.ELOOP},
		{"out", ssiv1.FsOp_FS_OP_OPEN, unix.ELOOP},
		{"state", ssiv1.FsOp_FS_OP_LOOKUP, unix.ENOENT},
		{"state/x", ssiv1.FsOp_FS_OP_CREATE, unix.ENOENT},
		{strings.Repeat("n", 256), ssiv1.FsOp_FS_OP_CREATE, unix.ENAMETOOLONG},
		{"a\x00b", ssiv1.FsOp_FS_OP_LOOKUP, unix.EINVAL},
		{"", ssiv1.FsOp_FS_OP_RENAME, unix.EBUSY},
		{"", ssiv1.FsOp_FS_OP_UNLINK, unix.EINVAL},
		{"x", ssiv1.FsOp(999), unix.ENOSYS},
		{"out", ssiv1.FsOp_FS_OP_SETATTR, unix.EOPNOTSUPP}, // a chmod through the symlink out
	} {
		m := x.serve(context.Background(), &ssiv1.FsRequest{Op: c.op, Path: []byte(c.path), Path2: []byte("y"), Flags: unix.O_RDONLY, Mode: 0o644,
			Set: &ssiv1.FsSetAttr{Valid: fattrMode, Mode: 0o777}})
		if unix.Errno(m.Errno) != c.want {
			t.Errorf("%v %q: errno %v, want %v", c.op, c.path, unix.Errno(m.Errno), c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		t.Fatal("a create escaped the export")
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() == 0o777 {
		t.Fatalf("a chmod escaped the export: %v %v", fi.Mode(), err)
	}
	m := x.serve(context.Background(), &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_READDIR})
	for _, e := range m.Entries {
		if string(e.Name) == "state" {
			t.Fatal("an excluded directory is listed")
		}
	}
}

func runAs(uid string, args ...string) (string, error) {
	cmd := append([]string{"--reuid=" + uid, "--regid=" + uid, "--clear-groups", "--"}, args...)
	return run("setpriv", cmd...)
}

func TestMakeLocalAndGlobal(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "motd")
	d := filepath.Join(dir, "conf.d")
	if err := os.WriteFile(f, []byte("shared"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "sub/x"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, d} {
		made, err := MakeLocal(p, []uint32{3, 1})
		if err != nil || len(made) != 2 || made[0] != 1 {
			t.Fatalf("MakeLocal %s: %v %v", p, made, err)
		}
		if !IsCDSL(p) {
			t.Fatalf("%s is no CDSL", p)
		}
		// A node that joined later gets a copy; the others are kept.
		if made, err := MakeLocal(p, []uint32{1, 2, 3}); err != nil || len(made) != 1 || made[0] != 2 {
			t.Fatalf("MakeLocal again: %v %v", made, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, ".motd.cdsl/node2"))
	if err != nil || string(b) != "shared" {
		t.Fatalf("node 2's copy: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, ".motd.cdsl/node3")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("node 3's copy lost its mode: %v %v", fi, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".motd.cdsl/node3"), []byte("three"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := MakeGlobal(f, 3); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(f); err != nil || string(b) != "three" || IsCDSL(f) {
		t.Fatalf("after MakeGlobal: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".motd.cdsl")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the copies are left: %v", err)
	}
	if err := MakeGlobal(d, 2); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(d, "sub/x")); err != nil || string(b) != "x" {
		t.Fatalf("the directory after MakeGlobal: %q %v", b, err)
	}
	if err := MakeGlobal(f, 1); err == nil {
		t.Fatal("MakeGlobal of a plain file")
	}
	if err := os.Symlink("elsewhere", filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	if _, err := MakeLocal(filepath.Join(dir, "l"), []uint32{1}); err == nil {
		t.Fatal("MakeLocal of a symlink")
	}
}

// FuzzServe sends the server malformed and hostile requests: none may
// crash it, and none may touch anything outside the export.
func FuzzServe(f *testing.F) {
	dir := f.TempDir()
	export := filepath.Join(dir, "export")
	srv, err := NewServer(ServerConfig{Export: export, Exclude: []string{filepath.Join(export, "state")}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Close)
	outside := filepath.Join(dir, "outside")
	if err := os.WriteFile(outside, []byte("untouched"), 0o644); err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(export, "up")); err != nil {
		f.Fatal(err)
	}
	x, err := srv.open(7, func(*ssiv1.FsMessage) error { return nil }, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { x.end(errors.New("fuzzing over")) })
	fi, err := os.Stat(dir)
	if err != nil {
		f.Fatal(err)
	}
	dirMode := fi.Mode()
	f.Add(uint8(5), "a", "", []byte("x"), int64(0), uint32(0o644), uint32(unix.O_RDWR), uint64(0))
	f.Add(uint8(16), "a", "../outside", []byte(nil), int64(0), uint32(0), uint32(0), uint64(0))
	f.Add(uint8(4), "up/outside", "", []byte(nil), int64(0), uint32(0), uint32(unix.O_RDWR|unix.O_TRUNC), uint64(0))
	f.Add(uint8(13), "up/outside", "b", []byte(nil), int64(0), uint32(0), uint32(0), uint64(0))
	f.Add(uint8(12), "l", "/etc/passwd", []byte(nil), int64(0), uint32(0), uint32(0), uint64(0))
	f.Add(uint8(7), "", "", []byte("data"), int64(-5), uint32(0), uint32(0), uint64(1))
	f.Add(uint8(21), "a", "", []byte("v"), int64(0), uint32(0), uint32(0), uint64(0))
	f.Fuzz(func(t *testing.T, op uint8, path, path2 string, data []byte, off int64, mode, flags uint32, handle uint64) {
		if len(data) > 4096 {
			data = data[:4096]
		}
		off %= 1 << 30 // sparse files, not a full disk
		o := ssiv1.FsOp(op % 32)
		if o == ssiv1.FsOp_FS_OP_SETLKW || o == ssiv1.FsOp_FS_OP_ALLOCATE {
			o = ssiv1.FsOp_FS_OP_SETLK // a blocking lock would wait; allocate could fill the disk
		}
		r := &ssiv1.FsRequest{Op: o, Path: []byte(path), Path2: []byte(path2), Data: data, Offset: off, Mode: mode, Flags: flags,
			Handle: handle % 8, Size: uint32(len(data)) * 16, Name: []byte("user." + path2), Owner: handle,
			Set:  &ssiv1.FsSetAttr{Valid: flags &^ (fattrSize), Mode: mode, Uid: 65534, Gid: 65534},
			Lock: &ssiv1.FsLock{Type: flags % 3, Start: uint64(off & 0xffff), End: uint64(off&0xffff) + 10}}
		_ = x.serve(context.Background(), r)
		if b, err := os.ReadFile(outside); err != nil || string(b) != "untouched" {
			t.Fatalf("a request changed a file outside the export: %q %v (%v)", b, err, r)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode() != dirMode {
			t.Fatalf("a request changed the directory beside the export: %v (%v)", fi.Mode(), r)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 2 {
			t.Fatalf("a request made something beside the export: %v (%v)", ents, r)
		}
	})
}

// Over a network that opens no connections of its own (memnet), sessions
// are Cfs.Session streams of the RPC service: the same filesystem.
func TestSessionOverRPCStream(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	srv, err := NewServer(ServerConfig{Export: filepath.Join(dir, "export")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var svc Service
	svc.Set(srv)
	mn := memnet.New()
	defer mn.Close()
	mux := http.NewServeMux()
	mux.Handle(ssiv1connect.NewCfsHandler(&svc))
	mn.Serve(1, mux)
	mnt := func(num uint32) *Client {
		c, err := Mount(context.Background(), ClientConfig{Self: num, Name: fmt.Sprint("n", num), Mount: filepath.Join(dir, fmt.Sprint("m", num)),
			Server: 1, Net: mn.Net(num), Failure: func() time.Duration { return 2 * time.Second }, CacheTimeout: testCacheTimeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	a, b := mnt(2), mnt(3)
	if _, ok := a.c.Net.(peer.Dialer); ok {
		t.Fatal("memnet opens connections of its own: this test would not use the RPC stream")
	}
	fa, fb := filepath.Join(a.c.Mount, "f"), filepath.Join(b.c.Mount, "f")
	for i := range 10 {
		want := fmt.Sprint("version ", i)
		if err := os.WriteFile(fa, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(fb); err != nil || string(got) != want {
			t.Fatalf("b read %q (%v), a wrote %q", got, err, want)
		}
	}
	if srv.Sessions() != 2 {
		t.Fatalf("%d sessions, want 2", srv.Sessions())
	}
}

// The kernel asks for security.capability before writes; the client
// answers "none" from what it learnt instead of asking the server each
// time, and a capability set on another node still goes with the next
// write on this one (the server's own kernel drops it as the data lands).
func TestCapabilityCheck(t *testing.T) {
	p := mountPair(t)
	fa, fb := p.at(p.a, "bin"), p.at(p.b, "bin")
	if err := os.WriteFile(fa, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := p.srv.Requests(ssiv1.FsOp_FS_OP_GETXATTR)
	for range 5 {
		if err := os.WriteFile(fa, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.srv.Requests(ssiv1.FsOp_FS_OP_GETXATTR) - before; n > 1 {
		t.Errorf("5 writes asked the server for security.capability %d times", n)
	}
	// struct vfs_cap_data, revision 2, effective, CAP_NET_RAW permitted.
	caps := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := unix.Setxattr(fb, capsXattr, caps, 0); err != nil {
		t.Skipf("cannot set a file capability here: %v", err)
	}
	if n, err := unix.Getxattr(fa, capsXattr, make([]byte, 64)); err != nil || n != len(caps) {
		t.Fatalf("a does not see the capability b set: %d %v", n, err)
	}
	f, err := os.OpenFile(fa, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("# changed\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := unix.Getxattr(fb, capsXattr, make([]byte, 64)); err != unix.ENODATA {
		t.Fatalf("a write on a kept the capability b set: %v", err)
	}
	// A file made and written asks nothing; one that existed with a
	// capability and is opened with O_CREAT loses it on write all the same.
	before = p.srv.Requests(ssiv1.FsOp_FS_OP_GETXATTR)
	if err := os.WriteFile(p.at(p.a, "new"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := p.srv.Requests(ssiv1.FsOp_FS_OP_GETXATTR) - before; n != 0 {
		t.Errorf("creating and writing a file asked for security.capability %d times", n)
	}
	if err := unix.Setxattr(fb, capsXattr, caps, 0); err != nil {
		t.Fatal(err)
	}
	f, err = os.OpenFile(fa, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("#"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := unix.Getxattr(fb, capsXattr, make([]byte, 64)); err != unix.ENODATA {
		t.Fatalf("a write through O_CREAT kept the capability: %v", err)
	}
}

// O_APPEND writes from two nodes at once never overwrite each other (the
// server appends), and a sparse file far past 4 GiB reads the same on both.
func TestAppendAndSparse(t *testing.T) {
	p := mountPair(t)
	var wg sync.WaitGroup
	for _, c := range []*Client{p.a, p.b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.OpenFile(p.at(c, "log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			for i := range 200 {
				if _, err := fmt.Fprintf(f, "node%d line %03d\n", c.c.Self, i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(p.at(p.a, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	seen := map[string]bool{}
	for _, l := range lines {
		if len(l) != len("node2 line 000") || seen[l] {
			t.Fatalf("a torn or repeated line %q in the appended log (%d lines)", l, len(lines))
		}
		seen[l] = true
	}
	if len(lines) != 400 {
		t.Fatalf("%d lines appended, want 400", len(lines))
	}

	const far = 5 << 30
	f, err := os.OpenFile(p.at(p.a, "sparse"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), far); err != nil {
		t.Fatal(err)
	}
	f.Close()
	g, err := os.Open(p.at(p.b, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if fi, err := g.Stat(); err != nil || fi.Size() != far+3 {
		t.Fatalf("b's size of the sparse file: %v %v", fi.Size(), err)
	}
	buf := make([]byte, 3)
	if _, err := g.ReadAt(buf, far); err != nil || string(buf) != "end" {
		t.Fatalf("b reads %q %v at 5 GiB", buf, err)
	}
	if off, err := unix.Seek(int(g.Fd()), 0, unix.SEEK_DATA); err != nil || off < far-(1<<20) {
		t.Fatalf("SEEK_DATA from 0 lands at %d (%v): the hole was not kept", off, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(p.export, "sparse"), &st); err != nil || st.Blocks*512 > 1<<20 {
		t.Fatalf("the server's file is not sparse: %d blocks %v", st.Blocks, err)
	}
}
