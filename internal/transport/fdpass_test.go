package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pipes returns n pipes; the test cleans them up.
func pipes(t *testing.T, n int) (rs, ws []*os.File) {
	t.Helper()
	for range n {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); w.Close() })
		rs, ws = append(rs, r), append(ws, w)
	}
	return rs, ws
}

// eofWithin reports whether r reaches EOF (every write end closed) soon.
func eofWithin(t *testing.T, r *os.File, d time.Duration) bool {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(d))
	_, err := io.ReadAll(r)
	return err == nil
}

func fdsOf(fs []*os.File) []int {
	var fds []int
	for _, f := range fs {
		fds = append(fds, int(f.Fd()))
	}
	return fds
}

// A CLI's client passes its descriptors with the first bytes; the handler
// takes them, with close-on-exec set, and they are the sender's files. A
// request on a connection without descriptors is served as before.
func TestFDPassingThroughControlSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ssi.sock")
	ln, err := ListenUnix(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []*os.File, 2)
	srv := NewUnixServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := CallerFrom(r.Context()); !ok {
			http.Error(w, "no caller", http.StatusInternalServerError)
			return
		}
		got <- TakeFDs(r.Context())
		if again := TakeFDs(r.Context()); len(again) != 0 {
			http.Error(w, "descriptors handed out twice", http.StatusInternalServerError)
		}
	}))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	rs, ws := pipes(t, 3)
	get := func(c *http.Client) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://ssi/x", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/2.0" {
			t.Fatalf("got %s %s, want 200 over HTTP/2", resp.Status, resp.Proto)
		}
	}
	get(NewUnixFDClient(path, fdsOf(ws)))
	fds := <-got
	if len(fds) != 3 {
		t.Fatalf("handler got %d descriptors, want 3", len(fds))
	}
	for i, f := range fds {
		flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("passed descriptor %d: flags %#x (%v), want FD_CLOEXEC", i, flags, err)
		}
		if _, err := f.Write([]byte{'a' + byte(i)}); err != nil {
			t.Fatalf("write through passed descriptor %d: %v", i, err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(rs[i], b); err != nil || b[0] != 'a'+byte(i) {
			t.Fatalf("descriptor %d is not the sender's pipe: read %q, %v", i, b, err)
		}
		f.Close()
	}
	get(NewUnixClient(path))
	if fds := <-got; len(fds) != 0 {
		t.Fatalf("a connection without descriptors handed out %d", len(fds))
	}
}

// At most MaxPassedFDs are kept per connection, the rest closed at once;
// those nobody took are closed with the connection.
func TestFDConnBoundsAndCloses(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	client, server := conn(sp[0]), NewFDConn(conn(sp[1]))
	defer client.Close()
	rs, ws := pipes(t, 5)
	if _, _, err := client.WriteMsgUnix([]byte("one"), unix.UnixRights(fdsOf(ws[:4])...), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := client.WriteMsgUnix([]byte("two"), unix.UnixRights(fdsOf(ws[4:])...), nil); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		w.Close() // the server's copies are what keeps each pipe open now
	}
	b := make([]byte, 6)
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "onetwo" {
		t.Fatalf("read %q, %v; want the data, descriptors or not", b, err)
	}
	for i, r := range rs {
		if closed := eofWithin(t, r, 200*time.Millisecond); closed != (i >= MaxPassedFDs) {
			t.Errorf("descriptor %d: closed %v, want %v (keep only the first %d)", i, closed, i >= MaxPassedFDs, MaxPassedFDs)
		}
	}
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs[:MaxPassedFDs] {
		if !eofWithin(t, r, guard) {
			t.Errorf("descriptor %d nobody took is still open after the connection closed", i)
		}
	}
	if fds := server.TakeFDs(); len(fds) != 0 {
		t.Errorf("closed connection still hands out %d descriptors", len(fds))
	}
	var oe *net.OpError
	if _, err := server.Read(b); !errors.As(err, &oe) && !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
}
