package cfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"golang.org/x/sys/unix"
)

func dirAttr(ino uint64) *ssiv1.FsAttr {
	return &ssiv1.FsAttr{Ino: ino, Mode: syscall.S_IFDIR | 0o755}
}

func req(op ssiv1.FsOp, parent uint64, path string) *ssiv1.FsRequest {
	return &ssiv1.FsRequest{Op: op, Parent: parent, Path: []byte(path)}
}

// An answer that crossed an invalidation, or this node's own change, is not
// kept; what a change says of its directory is.
func TestMetaCacheKeepsOnlyAnswersNothingCrossed(t *testing.T) {
	d := newMetaCache(time.Minute, func(id uint64) uint64 { return id })
	get := &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_GETATTR, Ino: 10}

	tk := d.begin(get)
	d.drop([]*ssiv1.FsInval{inodeInval(10)})
	d.end(tk, get, &ssiv1.FsMessage{Attr: dirAttr(10)}, 0)
	if _, ok := d.attr(10); ok {
		t.Fatal("an answer read after an invalidation of the same directory was kept")
	}

	tk = d.begin(get)
	mk := req(ssiv1.FsOp_FS_OP_MKDIR, 10, "d/sub")
	tm := d.begin(mk) // this node changes the directory meanwhile
	d.end(tk, get, &ssiv1.FsMessage{Attr: dirAttr(10)}, 0)
	if _, ok := d.attr(10); ok {
		t.Fatal("an answer that crossed this node's own change was kept")
	}
	after := dirAttr(10)
	after.Nlink = 3
	d.end(tm, mk, &ssiv1.FsMessage{Attr: dirAttr(11), Attr2: after}, 0)
	if a, ok := d.attr(10); !ok || a.Nlink != 3 {
		t.Fatalf("the parent's attributes after MKDIR: %v %v", a, ok)
	}
	// The new directory is known empty.
	if !d.absent(11, "x") {
		t.Fatal("a directory this node just made is not known empty")
	}
	cr := req(ssiv1.FsOp_FS_OP_CREATE, 11, "d/sub/x")
	d.end(d.begin(cr), cr, &ssiv1.FsMessage{Attr: &ssiv1.FsAttr{Ino: 12, Mode: syscall.S_IFREG}}, 0)
	if d.absent(11, "x") || !d.absent(11, "y") {
		t.Fatal("this node's create is not in the directory's names")
	}
	// Two changes of one directory in flight at once: the names are dropped.
	c1, c2 := req(ssiv1.FsOp_FS_OP_CREATE, 11, "d/sub/y"), req(ssiv1.FsOp_FS_OP_UNLINK, 11, "d/sub/x")
	t1, t2 := d.begin(c1), d.begin(c2)
	d.end(t1, c1, &ssiv1.FsMessage{Attr: &ssiv1.FsAttr{Ino: 13}}, 0)
	d.end(t2, c2, &ssiv1.FsMessage{}, 0)
	if d.absent(11, "zzz") {
		t.Fatal("names kept across two concurrent changes")
	}
	// Another node's change (an invalidation) drops the names and attributes.
	d.names[11] = &dirNames{names: map[string]struct{}{}, at: time.Now()}
	d.drop([]*ssiv1.FsInval{entryInval(11, "y")})
	if d.absent(11, "y") {
		t.Fatal("an entry invalidation left the names")
	}
	// A failed change leaves nothing known.
	d.names[11] = &dirNames{names: map[string]struct{}{}, at: time.Now()}
	cr = req(ssiv1.FsOp_FS_OP_CREATE, 11, "d/sub/q")
	d.end(d.begin(cr), cr, nil, syscall.EEXIST)
	if d.absent(11, "q") {
		t.Fatal("a failed create left the directory's names")
	}
	// Entries expire with the kernel's timeouts.
	short := newMetaCache(time.Millisecond, func(id uint64) uint64 { return id })
	short.names[5] = &dirNames{names: map[string]struct{}{}, at: time.Now()}
	short.attrs[5] = cachedAttr{dirAttr(5), time.Now()}
	time.Sleep(5 * time.Millisecond)
	if _, ok := short.attr(5); ok || short.absent(5, "x") {
		t.Fatal("expired entries still answer")
	}
}

// A listing is kept only if nothing changed while it was read.
func TestMetaCacheListing(t *testing.T) {
	d := newMetaCache(time.Minute, func(id uint64) uint64 { return id })
	ents := []*ssiv1.FsDirEntry{{Name: []byte("a"), Attr: dirAttr(21)}, {Name: []byte("b")}}
	l := d.listing()
	d.listed(20, l, ents)
	if d.absent(20, "a") || d.absent(20, "b") || !d.absent(20, "c") {
		t.Fatal("a complete listing is not known")
	}
	if _, ok := d.attr(21); !ok {
		t.Fatal("a listed directory's attributes are not kept")
	}
	d.flush()
	l = d.listing()
	d.drop([]*ssiv1.FsInval{inodeInval(99)})
	d.listed(20, l, ents)
	if d.absent(20, "c") {
		t.Fatal("a listing that crossed an invalidation was kept")
	}
	l = d.listing()
	u := req(ssiv1.FsOp_FS_OP_UNLINK, 20, "b")
	d.end(d.begin(u), u, &ssiv1.FsMessage{}, 0)
	d.listed(20, l, ents)
	if d.absent(20, "c") {
		t.Fatal("a listing that crossed this node's own change was kept")
	}
}

// Through two mounts: what one node keeps of a directory never hides
// another node's change, and it saves the round trips it is for.
func TestDirectoryCacheIsCoherent(t *testing.T) {
	p := mountPair(t)
	da, db := p.at(p.a, "d"), p.at(p.b, "d")
	if err := os.Mkdir(da, 0o755); err != nil {
		t.Fatal(err)
	}
	asked := func() uint64 {
		return p.srv.Requests(ssiv1.FsOp_FS_OP_LOOKUP) + p.srv.Requests(ssiv1.FsOp_FS_OP_GETATTR)
	}
	// Files made in a directory this node made: no LOOKUP of the new
	// names, no GETATTR of the directory after each.
	before := asked()
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(da, "f"+strconv.Itoa(i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := asked() - before; n > 2 {
		t.Errorf("20 creates in a directory made here asked %d LOOKUP/GETATTR", n)
	}
	// b lists files it never looked up: their attributes come with the
	// listing (READDIRPLUS), not one LOOKUP each.
	before = p.srv.Requests(ssiv1.FsOp_FS_OP_LOOKUP)
	ents, err := os.ReadDir(db)
	if err != nil || len(ents) != 20 {
		t.Fatalf("b lists %d entries: %v", len(ents), err)
	}
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(db, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.srv.Requests(ssiv1.FsOp_FS_OP_LOOKUP) - before; n > 2 {
		t.Errorf("listing and stat'ing 20 files asked %d LOOKUPs", n)
	}
	// Both now know the directory's names. Each change on one is seen on
	// the other the moment it returned.
	for i := range 30 {
		name := "n" + strconv.Itoa(i)
		if _, err := os.Stat(filepath.Join(da, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a sees %s before it exists: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(db, name), []byte("y"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(da, name)); err != nil {
			t.Fatalf("round %d: a does not see b's new file: %v", i, err)
		}
		if err := os.Remove(filepath.Join(da, name)); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(db, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: b still sees the file a removed: %v", i, err)
		}
		if err := os.Rename(filepath.Join(da, "f0"), filepath.Join(da, "g0")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(db, "g0")); err != nil {
			t.Fatalf("round %d: b does not see a's rename: %v", i, err)
		}
		if err := os.Rename(filepath.Join(db, "g0"), filepath.Join(db, "f0")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(da, "f0")); err != nil {
			t.Fatalf("round %d: a does not see b's rename back: %v", i, err)
		}
		// The directory's own attributes too.
		mode := os.FileMode(0o700 | (i%2)*0o055)
		if err := os.Chmod(db, mode); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(da); err != nil || st.Mode().Perm() != mode {
			t.Fatalf("round %d: a sees mode %v (%v) after b's chmod to %v", i, st.Mode().Perm(), err, mode)
		}
	}
	// Removing what this node knows asks nothing but the UNLINKs.
	before = asked()
	for i := 1; i < 20; i++ {
		if err := os.Remove(filepath.Join(da, "f"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := asked() - before; n > 2 {
		t.Errorf("19 unlinks of known files asked %d LOOKUP/GETATTR", n)
	}
}

// Files' attributes kept by one node follow every other node's change and
// this node's own changes by name (links, unlinks, renames).
func TestFileAttributesCacheIsCoherent(t *testing.T) {
	p := mountPair(t)
	fa, fb := p.at(p.a, "f"), p.at(p.b, "f")
	if err := os.WriteFile(fa, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A stat after this node's own write needs no GETATTR: the WRITE
	// answered with the new attributes.
	before := p.srv.Requests(ssiv1.FsOp_FS_OP_GETATTR)
	for i := range 10 {
		if err := os.WriteFile(fa, []byte(strconv.Itoa(i)+"..."), 0o644); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(fa); err != nil || st.Size() != int64(len(strconv.Itoa(i)+"...")) {
			t.Fatalf("a's stat after its write: %v %v", st, err)
		}
	}
	if n := p.srv.Requests(ssiv1.FsOp_FS_OP_GETATTR) - before; n > 2 {
		t.Errorf("10 writes each followed by a stat asked %d GETATTRs", n)
	}
	for i := range 20 {
		data := []byte(strconv.Itoa(i) + "-" + string(make([]byte, i)))
		if err := os.WriteFile(fb, data, 0o600|os.FileMode(i%2)*0o044); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(fb, 0o600|os.FileMode(i%2)*0o044); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(fa)
		if err != nil || st.Size() != int64(len(data)) || st.Mode().Perm() != 0o600|os.FileMode(i%2)*0o044 {
			t.Fatalf("round %d: a sees %v (%v) after b wrote %d bytes", i, st, err, len(data))
		}
		if err := os.Truncate(fb, 1); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(fa); err != nil || st.Size() != 1 {
			t.Fatalf("round %d: a sees %v (%v) after b truncated the file", i, st, err)
		}
	}
	// This node's own links and unlinks by name.
	g := p.at(p.a, "g")
	if _, err := os.Stat(fa); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(fa, g); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(fa); err != nil || nlink(st) != 2 {
		t.Fatalf("after a link, f has %d links (%v)", nlink(st), err)
	}
	if err := os.Remove(g); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(fa); err != nil || nlink(st) != 1 {
		t.Fatalf("after the unlink of its other name, f has %d links (%v)", nlink(st), err)
	}
	if err := os.Link(fa, g); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.at(p.a, "h"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p.at(p.a, "h"), g); err != nil { // replaces g: f loses a link
		t.Fatal(err)
	}
	if st, err := os.Stat(fa); err != nil || nlink(st) != 1 {
		t.Fatalf("after a rename over its other name, f has %d links (%v)", nlink(st), err)
	}
}

func nlink(st os.FileInfo) uint64 {
	if st == nil {
		return 0
	}
	return uint64(st.Sys().(*syscall.Stat_t).Nlink)
}

// Extended attributes a file is known not to have are answered without a
// round trip, and another node's setxattr is seen at once.
func TestMissingXattrsAreKnown(t *testing.T) {
	p := mountPair(t)
	fa, fb := p.at(p.a, "x"), p.at(p.b, "x")
	if err := os.WriteFile(fa, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := unix.Getxattr(fa, "user.colour", buf); err != unix.ENODATA {
		t.Fatalf("getxattr of a missing attribute: %v", err)
	}
	before := p.srv.Requests(ssiv1.FsOp_FS_OP_GETXATTR)
	for range 10 {
		if _, err := unix.Getxattr(fa, "user.colour", buf); err != unix.ENODATA {
			t.Fatalf("getxattr of a missing attribute: %v", err)
		}
	}
	if n := p.srv.Requests(ssiv1.FsOp_FS_OP_GETXATTR) - before; n != 0 {
		t.Errorf("10 getxattr of an attribute known missing asked the server %d times", n)
	}
	for i := range 20 {
		v := []byte(strconv.Itoa(i))
		if err := unix.Setxattr(fb, "user.colour", v, 0); err != nil {
			t.Skipf("user xattrs not supported here: %v", err)
		}
		if n, err := unix.Getxattr(fa, "user.colour", buf); err != nil || string(buf[:n]) != string(v) {
			t.Fatalf("round %d: a reads %q (%v) after b set %q", i, buf[:max(n, 0)], err, v)
		}
		if err := unix.Removexattr(fb, "user.colour"); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Getxattr(fa, "user.colour", buf); err != unix.ENODATA {
			t.Fatalf("round %d: a still sees the attribute b removed: %v", i, err)
		}
		// This node's own setxattr is seen by itself at once.
		if err := unix.Setxattr(fa, "user.colour", v, 0); err != nil {
			t.Fatal(err)
		}
		if n, err := unix.Getxattr(fa, "user.colour", buf); err != nil || string(buf[:n]) != string(v) {
			t.Fatalf("round %d: a reads %q (%v) after its own set", i, buf[:max(n, 0)], err)
		}
		if err := unix.Removexattr(fa, "user.colour"); err != nil {
			t.Fatal(err)
		}
	}
}

// The kernel takes a large directory's entries over several READDIRPLUS
// requests: a change another node makes between two of them must not come
// back from the listing read before it.
func TestListingIsNotHandedOutAfterAChange(t *testing.T) {
	p := mountPair(t)
	db := p.at(p.b, "big")
	if err := os.Mkdir(db, 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 400
	for i := range n {
		if err := os.WriteFile(filepath.Join(db, fmt.Sprintf("f%03d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(p.at(p.a, "big"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 512) // a few entries per call: one READDIRPLUS each
	if _, err := unix.Getdents(fd, buf); err != nil {
		t.Fatal(err)
	}
	last := filepath.Join(db, fmt.Sprintf("f%03d", n-1))
	if err := os.WriteFile(last, []byte("changed on b after a's listing began"), 0o644); err != nil {
		t.Fatal(err)
	}
	for {
		k, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			break
		}
	}
	st, err := os.Stat(p.at(p.a, filepath.Join("big", fmt.Sprintf("f%03d", n-1))))
	if err != nil || st.Size() != int64(len("changed on b after a's listing began")) {
		t.Fatalf("a sees size %d (%v) for a file b wrote before a's listing reached it", st.Size(), err)
	}
}
