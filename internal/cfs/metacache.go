package cfs

import (
	"slices"
	"sync"
	"syscall"
	"time"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// metaCache is what a mount knows beyond the kernel's own caches, so that
// the kernel's questions need no round trip:
//
//   - a file's attributes, from the last answer that carried them (a LOOKUP,
//     a GETATTR, a listing, a WRITE or SETATTR, or the parent's attributes
//     that CREATE, MKDIR, UNLINK… return). The kernel asks for them again
//     after each change it makes (after each create or unlink in a
//     directory, to check permissions with fresh ones; after a write, for
//     the new times);
//   - a directory's complete list of names, from a listing or because this
//     node made the directory: a name that is not in it does not exist, so
//     a LOOKUP of a new name (before every create) is answered ENOENT here.
//
// Both follow the same rule as the kernel's caches: the server invalidates
// this node before any other node's change is acknowledged, and what an
// invalidation names is dropped here synchronously, as the message is read
// (before any answer read after it), while the kernel's copy is dropped in
// a goroutine. An answer to a question is kept only if no invalidation
// arrived and no change of this node's was made between its request and
// its answer; what a change answers is kept only if no invalidation
// arrived and no other change of this node's to the same file or
// directory was in flight. The files an UNLINK or RENAME changes by name
// come back in its answer's Inval and are dropped. Entries
// expire with the kernel's timeouts, which bounds changes made behind
// ssi's back as for the kernel's caches.
type metaCache struct {
	ttl  time.Duration
	norm func(uint64) uint64 // the one number of a file (the root has two)

	mu       sync.Mutex
	gen      uint64         // invalidations and flushes seen
	seq      uint64         // changes of this node's started
	busy     int            // changes of this node's in flight
	inflight map[uint64]int // the same, per directory
	attrs    map[uint64]cachedAttr
	names    map[uint64]*dirNames
	// noxattr are extended attributes files are known not to have (the
	// kernel asks for security.capability before every write, ls for
	// ACLs and security labels), dropped like attributes.
	noxattr map[uint64]map[string]struct{}
}

type cachedAttr struct {
	a  *ssiv1.FsAttr
	at time.Time
}

type dirNames struct {
	names map[string]struct{}
	at    time.Time
}

func newMetaCache(ttl time.Duration, norm func(uint64) uint64) *metaCache {
	return &metaCache{ttl: ttl, norm: norm, attrs: map[uint64]cachedAttr{}, names: map[uint64]*dirNames{}, inflight: map[uint64]int{}, noxattr: map[uint64]map[string]struct{}{}}
}

// drop forgets what invals name. It runs as the invalidation is read.
func (d *metaCache) drop(invals []*ssiv1.FsInval) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	for _, iv := range invals {
		for _, id := range []uint64{iv.Ino, iv.Parent} {
			if id != 0 {
				id = d.norm(id)
				delete(d.attrs, id)
				delete(d.names, id)
				delete(d.noxattr, id)
			}
		}
	}
}

// flush forgets everything (a new session: invalidations may be lost).
func (d *metaCache) flush() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	clear(d.attrs)
	clear(d.names)
	clear(d.noxattr)
}

// forget drops what is kept of file id (the kernel forgot it: the server
// may give its number to another file).
func (d *metaCache) forget(id uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id = d.norm(id)
	delete(d.attrs, id)
	delete(d.names, id)
	delete(d.noxattr, id)
}

// lacks says whether file id is known not to have extended attribute name.
func (d *metaCache) lacks(id uint64, name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.noxattr[d.norm(id)][name]
	return ok
}

func (d *metaCache) setLacks(id uint64, name string) {
	id = d.norm(id)
	if d.noxattr[id] == nil {
		d.noxattr[id] = map[string]struct{}{}
	}
	d.noxattr[id][name] = struct{}{}
}

// attr is file id's attributes, if known and fresh.
func (d *metaCache) attr(id uint64) (*ssiv1.FsAttr, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.attrs[d.norm(id)]
	if !ok || time.Since(c.at) > d.ttl {
		return nil, false
	}
	return c.a, true
}

// absent says whether name is known not to be in directory id.
func (d *metaCache) absent(id uint64, name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.names[d.norm(id)]
	if !ok || time.Since(n.at) > d.ttl {
		return false
	}
	_, in := n.names[name]
	return !in
}

// ticket is what begin saw, for end.
type ticket struct {
	gen, seq uint64
	quiet    bool     // no change of this node's was in flight
	ids      []uint64 // files and directories the request changes
}

// changed are the files and directories request r changes (the
// directory first where there is one; r.Ino is the new parent of a
// RENAME, the linked file of a LINK).
func changed(r *ssiv1.FsRequest) []uint64 {
	switch r.Op {
	case ssiv1.FsOp_FS_OP_CREATE, ssiv1.FsOp_FS_OP_MKDIR, ssiv1.FsOp_FS_OP_MKNOD, ssiv1.FsOp_FS_OP_SYMLINK,
		ssiv1.FsOp_FS_OP_UNLINK, ssiv1.FsOp_FS_OP_RMDIR:
		return []uint64{r.Parent}
	case ssiv1.FsOp_FS_OP_RENAME, ssiv1.FsOp_FS_OP_LINK:
		return []uint64{r.Parent, r.Ino}
	case ssiv1.FsOp_FS_OP_SETATTR, ssiv1.FsOp_FS_OP_SETXATTR, ssiv1.FsOp_FS_OP_REMOVEXATTR,
		ssiv1.FsOp_FS_OP_WRITE, ssiv1.FsOp_FS_OP_ALLOCATE, ssiv1.FsOp_FS_OP_OPEN:
		return []uint64{r.Ino}
	}
	return nil
}

// begin is called before request r is sent: a change drops the attributes
// it makes stale and counts as in flight. A READ drops the file's
// attributes (its access time may move).
func (d *metaCache) begin(r *ssiv1.FsRequest) ticket {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := ticket{gen: d.gen, seq: d.seq, quiet: d.busy == 0}
	if r.Op == ssiv1.FsOp_FS_OP_READ && r.Ino != 0 {
		delete(d.attrs, d.norm(r.Ino))
	}
	for _, id := range changed(r) {
		if id == 0 {
			continue
		}
		id = d.norm(id)
		if slices.Contains(t.ids, id) {
			continue // a RENAME within one directory
		}
		t.ids = append(t.ids, id)
		delete(d.attrs, id)
		if r.Op == ssiv1.FsOp_FS_OP_SETXATTR || r.Op == ssiv1.FsOp_FS_OP_REMOVEXATTR {
			// Only a setxattr makes an attribute appear (a chown drops
			// capabilities, a chmod changes an ACL that exists).
			delete(d.noxattr, id)
		}
		d.inflight[id]++
	}
	if len(t.ids) > 0 {
		d.seq++
		d.busy++
	}
	return t
}

// end is called with r's answer: it keeps what the answer says about
// directories, and this node's own change of a directory's names.
func (d *metaCache) end(t ticket, r *ssiv1.FsRequest, m *ssiv1.FsMessage, errno syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	alone := true
	for _, id := range t.ids {
		if d.inflight[id] > 1 {
			alone = false
		}
		if d.inflight[id]--; d.inflight[id] <= 0 {
			delete(d.inflight, id)
		}
	}
	if len(t.ids) > 0 {
		d.busy--
	}
	if m != nil {
		for _, iv := range m.Inval {
			if iv.Ino != 0 {
				delete(d.attrs, d.norm(iv.Ino)) // what a change changed by name
			}
		}
	}
	fresh := d.gen == t.gen
	now := time.Now()
	if len(t.ids) == 0 {
		// A question: its answer holds if nothing changed meanwhile.
		if !fresh || !t.quiet || d.seq != t.seq {
			return
		}
		if errno == 0 && m != nil && m.Attr != nil {
			d.attrs[d.norm(m.Attr.Ino)] = cachedAttr{m.Attr, now}
		}
		if r.Op == ssiv1.FsOp_FS_OP_GETXATTR && errno == syscall.ENODATA && r.Ino != 0 {
			d.setLacks(r.Ino, string(r.Name))
		}
		return
	}
	if errno != 0 || m == nil || !fresh || !alone {
		for _, id := range t.ids {
			delete(d.names, id) // what it did, or what else did, is unknown
		}
		return
	}
	if m.Attr != nil {
		d.attrs[d.norm(m.Attr.Ino)] = cachedAttr{m.Attr, now}
	}
	if m.Attr2 != nil && r.Parent != 0 {
		d.attrs[d.norm(r.Parent)] = cachedAttr{m.Attr2, now}
	}
	parent := d.norm(r.Parent)
	name := baseName(string(r.Path))
	switch r.Op {
	case ssiv1.FsOp_FS_OP_CREATE, ssiv1.FsOp_FS_OP_MKNOD, ssiv1.FsOp_FS_OP_SYMLINK:
		d.add(parent, name)
		if r.Op == ssiv1.FsOp_FS_OP_CREATE && m.Attr != nil {
			// A file just made has no capability, and one opened with
			// O_CREAT that had one loses it with its first write on the
			// server anyway (the server's kernel drops it).
			d.setLacks(m.Attr.Ino, capsXattr)
		}
	case ssiv1.FsOp_FS_OP_LINK:
		d.add(parent, baseName(string(r.Path2)))
	case ssiv1.FsOp_FS_OP_MKDIR:
		d.add(parent, name)
		if m.Attr != nil {
			// Made here a moment ago: empty, and every later change in
			// it reaches this node as an invalidation or as its own.
			d.names[d.norm(m.Attr.Ino)] = &dirNames{names: map[string]struct{}{}, at: now}
		}
	case ssiv1.FsOp_FS_OP_UNLINK, ssiv1.FsOp_FS_OP_RMDIR:
		if n := d.names[parent]; n != nil {
			delete(n.names, name)
		}
	case ssiv1.FsOp_FS_OP_RENAME:
		// Both lists would need the outcome of the exchange and
		// no-replace flags: drop them.
		delete(d.names, parent)
		delete(d.names, d.norm(r.Ino))
	}
}

func (d *metaCache) add(dir uint64, name string) {
	if n := d.names[dir]; n != nil {
		n.names[name] = struct{}{}
	}
}

// listing is what listed needs to know at the start of a listing.
type listing struct {
	gen, seq uint64
	quiet    bool
}

func (d *metaCache) listing() listing {
	d.mu.Lock()
	defer d.mu.Unlock()
	return listing{gen: d.gen, seq: d.seq, quiet: d.busy == 0}
}

// still says whether nothing changed since l: no invalidation, no change of
// this node's (a listing's attributes may then still be handed out).
func (d *metaCache) still(l listing) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gen == l.gen && d.seq == l.seq
}

// listed keeps a complete listing of directory id (and its entries'
// attributes), if nothing changed since l.
func (d *metaCache) listed(id uint64, l listing, entries []*ssiv1.FsDirEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !l.quiet || d.gen != l.gen || d.seq != l.seq {
		return
	}
	now := time.Now()
	n := &dirNames{names: make(map[string]struct{}, len(entries)), at: now}
	for _, e := range entries {
		n.names[string(e.Name)] = struct{}{}
		if e.Attr != nil {
			d.attrs[d.norm(e.Attr.Ino)] = cachedAttr{e.Attr, now}
		}
	}
	d.names[d.norm(id)] = n
}
