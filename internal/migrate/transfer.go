package migrate

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// A checkpoint travels as one stream over the cluster's authenticated
// transport (no shared disk): a header, then a tar archive of CRIU's images
// and the job's log, in chunks.

// chunkSize is the data carried by one message (the Migrate endpoint reads
// messages of up to twice that).
const chunkSize = 256 << 10

// logEntry is the archive's name of the detached job's log.
const logEntry = "ssi-job.log"

type chunkSender interface {
	Send(*ssiv1.MigrateChunk) error
}

// send writes the header and the archive of dir (and the log) to st; it
// returns the bytes sent.
func send(st chunkSender, hdr *ssiv1.MigrateHeader, dir, logPath string, progress func(int64)) (int64, error) {
	if err := st.Send(&ssiv1.MigrateChunk{Header: hdr}); err != nil {
		return 0, err
	}
	cw := &chunkWriter{st: st, progress: progress}
	bw := bufio.NewWriterSize(cw, chunkSize)
	tw := tar.NewWriter(bw)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	add := func(name, path string) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: fi.Size(), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		// The log may still grow (a thawed job writing, which a frozen one
		// does not): send what Stat saw.
		_, err = io.CopyN(tw, f, fi.Size())
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == "dump.log" {
			continue
		}
		if err := add(e.Name(), filepath.Join(dir, e.Name())); err != nil {
			return cw.n, fmt.Errorf("sending image %s: %w", e.Name(), err)
		}
	}
	if logPath != "" {
		if err := add(logEntry, logPath); err != nil {
			return cw.n, fmt.Errorf("sending the job's log: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return cw.n, err
	}
	return cw.n, bw.Flush()
}

type chunkWriter struct {
	st       chunkSender
	n        int64
	progress func(int64) // told the bytes sent, at most every progressEvery
	told     time.Time
}

// progressEvery bounds how often a transfer reports its bytes.
const progressEvery = 250 * time.Millisecond

func (w *chunkWriter) Write(b []byte) (int, error) {
	for off := 0; off < len(b); off += chunkSize {
		end := min(off+chunkSize, len(b))
		if err := w.st.Send(&ssiv1.MigrateChunk{Data: b[off:end]}); err != nil {
			return off, err
		}
		w.n += int64(end - off)
		if w.progress != nil && time.Since(w.told) >= progressEvery {
			w.told = time.Now()
			w.progress(w.n)
		}
	}
	return len(b), nil
}

// chunkReader reads the archive's bytes from the stream's messages; a
// message without data (the commit) ends it.
type chunkReader struct {
	recv func() (*ssiv1.MigrateChunk, error)
	buf  []byte
	err  error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		c, err := r.recv()
		if err != nil {
			r.err = err
			continue
		}
		if c.Header != nil {
			r.err = errors.New("a second header in the stream")
			continue
		}
		if len(c.Data) == 0 {
			r.err = io.ErrUnexpectedEOF
			continue
		}
		r.buf = c.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// receive unpacks the archive: images into dir, the log to logPath.
func receive(r io.Reader, dir, logPath string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the checkpoint: %w", err)
		}
		if h.Typeflag != tar.TypeReg || h.Name == "" || strings.ContainsAny(h.Name, "/\\") || h.Name == "." || h.Name == ".." {
			return fmt.Errorf("reading the checkpoint: unexpected entry %q", h.Name)
		}
		path := filepath.Join(dir, h.Name)
		if h.Name == logEntry {
			if logPath == "" {
				return errors.New("reading the checkpoint: a log for a job that has none")
			}
			path = logPath
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("reading the checkpoint: %w", err)
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("reading the checkpoint: writing %s: %w", h.Name, err)
		}
	}
}
