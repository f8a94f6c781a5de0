package cfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// dirHandle is an open directory: its listing, read from the server when
// first needed (and again after a rewind), with every entry's attributes,
// so that the kernel's READDIRPLUS needs no LOOKUP per entry.
type dirHandle struct {
	n *node

	mu      sync.Mutex
	entries []*ssiv1.FsDirEntry
	seen    listing // the cache's state when the listing was read
	loaded  bool
	pos     int
	last    *ssiv1.FsDirEntry // the entry Readdirent gave last
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileLookuper     = (*dirHandle)(nil)
	_ fs.FileReleasedirer = (*dirHandle)(nil)
)

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{n: n}, 0, 0
}

// load reads the whole listing, a page at a time.
func (h *dirHandle) load(ctx context.Context) syscall.Errno {
	l := h.n.c.meta.listing()
	var all []*ssiv1.FsDirEntry
	for off := int64(0); ; {
		m, errno := h.n.c.call(ctx, &ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_READDIR, Path: []byte(h.n.path()), Ino: h.n.id(), Offset: off})
		if errno != 0 {
			return errno
		}
		all = append(all, m.Entries...)
		off += int64(len(m.Entries))
		if !m.More || len(m.Entries) == 0 {
			break
		}
	}
	h.n.c.meta.listed(h.n.id(), l, all)
	h.entries, h.seen, h.loaded, h.pos, h.last = all, l, true, 0, nil
	return 0
}

func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.loaded {
		if errno := h.load(ctx); errno != 0 {
			return nil, errno
		}
	}
	if h.pos >= len(h.entries) {
		return nil, 0
	}
	e := h.entries[h.pos]
	h.pos++
	h.last = e
	return &fuse.DirEntry{Name: string(e.Name), Ino: e.Ino, Mode: e.Mode, Off: uint64(h.pos)}, 0
}

// Seekdir goes to offset off (the Off of the entry before it); 0 reads the
// directory again, as a rewinddir must see its changes.
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if off == 0 {
		h.loaded = false
		return 0
	}
	if !h.loaded {
		if errno := h.load(ctx); errno != 0 {
			return errno
		}
	}
	h.pos, h.last = min(int(off), len(h.entries)), nil
	return 0
}

// Lookup gives READDIRPLUS the entry Readdirent just gave, from the
// attributes in the listing while nothing changed since it was read (the
// kernel hands out a large directory's entries over several requests, and
// takes what each one says as news of that moment); otherwise, or for an
// entry without them, the file is looked up.
func (h *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	h.mu.Lock()
	e, seen := h.last, h.seen
	h.mu.Unlock()
	if e != nil && e.Attr != nil && string(e.Name) == name && h.n.c.meta.still(seen) {
		return h.n.newChild(ctx, e.Attr, out), 0
	}
	return h.n.Lookup(ctx, name, out)
}

func (h *dirHandle) Releasedir(ctx context.Context, flags uint32) {}
