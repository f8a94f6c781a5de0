package netboot

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// Image is an initramfs being built in memory: files by path, each
// directory once (u-root's newc writer refuses nothing, but the kernel
// and u-root's reader take a second record of a directory badly).
type Image struct {
	recs map[string]cpio.Record
}

// NewImage returns an empty image.
func NewImage() *Image { return &Image{recs: map[string]cpio.Record{}} }

func cleanName(name string) (string, error) {
	n := path.Clean("/" + name)
	if n == "/" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("bad initramfs path %q", name)
	}
	return n[1:], nil
}

func (im *Image) parents(name string) {
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := im.recs[d]; !ok {
			im.recs[d] = cpio.Directory(d, 0o755)
		}
	}
}

// Dir adds a directory.
func (im *Image) Dir(name string, perm uint64) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if r, ok := im.recs[n]; ok && r.Mode&cpio.S_IFMT != cpio.S_IFDIR {
		return fmt.Errorf("initramfs: %s is already a file", n)
	}
	im.parents(n)
	im.recs[n] = cpio.Directory(n, perm)
	return nil
}

// File adds a regular file (replacing one of the same name).
func (im *Image) File(name string, data []byte, perm uint64) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if r, ok := im.recs[n]; ok && r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
		return fmt.Errorf("initramfs: %s is already a directory", n)
	}
	im.parents(n)
	im.recs[n] = cpio.StaticRecord(data, cpio.Info{Name: n, Mode: cpio.S_IFREG | perm})
	return nil
}

// Symlink adds a symbolic link.
func (im *Image) Symlink(name, target string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	im.parents(n)
	im.recs[n] = cpio.Symlink(n, target)
	return nil
}

// CharDev adds a character device node (/dev/console, so the kernel can
// give /init its console before devtmpfs is mounted).
func (im *Image) CharDev(name string, perm, major, minor uint64) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	im.parents(n)
	im.recs[n] = cpio.CharDev(n, perm, major, minor)
	return nil
}

// Names lists the image's paths in the order they are written.
func (im *Image) Names() []string {
	names := make([]string, 0, len(im.recs))
	for n := range im.recs {
		names = append(names, n)
	}
	// Sorted paths put every directory before what it holds.
	sort.Strings(names)
	return names
}

// WriteTo writes the image as a gzip'd newc cpio archive, owned by root,
// with time 0 (the same inputs give the same bytes).
func (im *Image) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	zw, err := gzip.NewWriterLevel(cw, gzip.DefaultCompression)
	if err != nil {
		return 0, err
	}
	rw := cpio.Newc.Writer(zw)
	for i, n := range im.Names() {
		r := cpio.MakeReproducible(im.recs[n])
		r.Ino, r.NLink = uint64(i+1), 1
		if err := rw.WriteRecord(r); err != nil {
			return cw.n, fmt.Errorf("writing %s into the initramfs: %w", n, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return cw.n, err
	}
	if err := zw.Close(); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// Bytes is WriteTo into memory.
func (im *Image) Bytes() ([]byte, error) {
	var b bytes.Buffer
	_, err := im.WriteTo(&b)
	return b.Bytes(), err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadImage reads a gzip'd newc archive back (u-root's reader): what
// the kernel will unpack, for checks and tests.
func ReadImage(r io.Reader) ([]cpio.Record, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("not a gzip'd initramfs: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 1<<30))
	if err != nil {
		return nil, err
	}
	return cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
}

// RecordData is a record's contents.
func RecordData(r cpio.Record) ([]byte, error) {
	if r.ReaderAt == nil {
		return nil, nil
	}
	return io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
}
