package procspace

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	return b
}

// copyFD moves everything from a pipe into a pipe (splice) and into a file
// opened for appending (which cannot be spliced into: the buffer copy),
// and reports EOF as no error.
func TestCopyFD(t *testing.T) {
	data := randomBytes(3<<20 + 123)
	stop, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.close()
	feed := func(w *os.File) {
		go func() { _, _ = w.Write(data); w.Close() }()
	}

	inR, inW := testPipe(t)
	outR, outW := testPipe(t)
	feed(inW)
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(outR); got <- b }()
	rerr, werr := copyFD(rawFD(outW), rawFD(inR), stop.fd, make([]byte, 4096))
	outW.Close()
	if rerr != nil || werr != nil {
		t.Fatalf("pipe to pipe: read error %v, write error %v", rerr, werr)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("pipe to pipe: got %d bytes, want the %d sent", len(b), len(data))
	}

	path := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(path, []byte("head\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	inR2, inW2 := testPipe(t)
	feed(inW2)
	if rerr, werr := copyFD(rawFD(f), rawFD(inR2), stop.fd, make([]byte, 4096)); rerr != nil || werr != nil {
		t.Fatalf("pipe to appended file: read error %v, write error %v", rerr, werr)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, append([]byte("head\n"), data...)) {
		t.Fatalf("appended file has %d bytes, want %d", len(b), 5+len(data))
	}
}

// A pump waiting for input, or for room in a full output, returns
// errStopped once stopped; a reader that went away is a write error.
func TestCopyFDStopsAndBrokenPipe(t *testing.T) {
	stop, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.close()
	inR, inW := testPipe(t) // nothing is ever written
	outR, outW := testPipe(t)
	done := make(chan error, 1)
	go func() { rerr, _ := copyFD(rawFD(outW), rawFD(inR), stop.fd, make([]byte, 4096)); done <- rerr }()
	select {
	case err := <-done:
		t.Fatalf("copyFD returned %v before it was stopped", err)
	case <-time.After(50 * time.Millisecond):
	}
	stop.stop()
	select {
	case err := <-done:
		if !errors.Is(err, errStopped) {
			t.Fatalf("stopped copyFD: %v, want errStopped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("copyFD did not stop")
	}

	stop2, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer stop2.close()
	go func() { _, _ = inW.Write(randomBytes(1 << 20)) }()
	outR.Close()
	_, werr := copyFD(rawFD(outW), rawFD(inR), stop2.fd, make([]byte, 4096))
	if werr == nil {
		t.Fatal("copyFD into a pipe without a reader: no write error")
	}
}

// Writing more than a full pipe holds into a blocking pipe nobody reads
// stops when told (a plain write(2) would wait for the reader for good),
// and what a reader takes arrives whole.
func TestFDWriterStopsOnFullPipe(t *testing.T) {
	stop, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.close()
	r, w := testPipe(t)
	fd := int(w.Fd()) // Fd makes it blocking, like a pipe passed by a CLI
	fw, err := newFDWriter(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.close()
	done := make(chan error, 1)
	go func() { done <- fw.write(randomBytes(4<<20), stop.fd) }()
	time.Sleep(50 * time.Millisecond)
	stop.stop()
	select {
	case err := <-done:
		if !errors.Is(err, errStopped) {
			t.Fatalf("write into a full pipe, stopped: %v, want errStopped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write into a full pipe did not stop")
	}

	stop2, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer stop2.close()
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = io.Copy(io.Discard, r) }() // what the first write left
	data := randomBytes(3 << 20)
	r2, w2 := testPipe(t)
	fw2, err := newFDWriter(int(w2.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer fw2.close()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(r2); got <- b }()
	if err := fw2.write(data, stop2.fd); err != nil {
		t.Fatal(err)
	}
	w2.Close()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("got %d bytes, want the %d written", len(b), len(data))
	}
}
