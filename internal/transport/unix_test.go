package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// serveUnix serves the control socket at path and answers every request
// with the caller the server saw and the protocol.
func serveUnix(t *testing.T, ln net.Listener) {
	t.Helper()
	srv := NewUnixServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := CallerFrom(r.Context())
		if !ok {
			http.Error(w, "no caller", http.StatusInternalServerError)
			return
		}
		w.Header().Set("X-Proto", r.Proto)
		_ = json.NewEncoder(w).Encode(c)
	}))
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-served })
}

func callUnix(t *testing.T, c *http.Client) (Caller, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://ssi/whoami", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("call the control socket: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("control socket: HTTP %d", resp.StatusCode)
	}
	var caller Caller
	if err := json.NewDecoder(resp.Body).Decode(&caller); err != nil {
		t.Fatal(err)
	}
	return caller, resp.Header.Get("X-Proto")
}

func TestUnixSocketModeAndCaller(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "ssi", "ssi.sock") // ListenUnix makes the directories
	ln, err := ListenUnix(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("%s has mode %v, want a socket with mode 0660", path, fi.Mode())
	}
	serveUnix(t, ln)

	want := Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		want.Groups = append(want.Groups, uint32(g))
	}
	slices.Sort(want.Groups)

	plain := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	for name, tc := range map[string]struct {
		client *http.Client
		proto  string
	}{
		"CLI client": {NewUnixClient(path), "HTTP/2.0"},
		"HTTP/1.1":   {plain, "HTTP/1.1"},
	} {
		got, proto := callUnix(t, tc.client)
		tc.client.CloseIdleConnections()
		slices.Sort(got.Groups)
		if got.PID != want.PID || got.UID != want.UID || got.GID != want.GID || !slices.Equal(got.Groups, want.Groups) {
			t.Errorf("%s: the server saw caller %+v, want this process %+v", name, got, want)
		}
		if proto != tc.proto {
			t.Errorf("%s: protocol %s, want %s", name, proto, tc.proto)
		}
	}
}

func TestListenUnixGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ssi.sock")
	gid := os.Getgid()
	ln, err := ListenUnix(path, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid || fi.Mode().Perm() != 0o660 {
		t.Errorf("%s: group %d mode %v, want group %d mode 0660", path, st.Gid, fi.Mode().Perm(), gid)
	}
}

// A socket a daemon serves is not taken over; one left behind by a daemon
// that died is replaced.
func TestListenUnixLiveAndStaleSockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ssi.sock")
	ln, err := ListenUnix(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := ListenUnix(path, -1); err == nil || !strings.Contains(err.Error(), "another daemon is already serving "+path) {
		if l2 != nil {
			l2.Close()
		}
		t.Fatalf("second ListenUnix on a live socket: %v", err)
	}
	// The daemon dies without removing its socket.
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the stale socket is gone already: %v", err)
	}
	ln, err = ListenUnix(path, -1)
	if err != nil {
		t.Fatalf("ListenUnix over a stale socket: %v", err)
	}
	serveUnix(t, ln)
	c := NewUnixClient(path)
	defer c.CloseIdleConnections()
	if got, _ := callUnix(t, c); got.PID != int32(os.Getpid()) {
		t.Errorf("the new socket saw caller %+v", got)
	}
}

func TestUnixClientWithoutDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ssi.sock")
	_, err := NewUnixClient(path).Get("http://ssi/whoami")
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("no ssi daemon is listening on %s", path)) {
		t.Errorf("no daemon: %v, want a message naming the socket", err)
	}
}

func TestCallerInGroup(t *testing.T) {
	c := Caller{GID: 100, Groups: []uint32{4, 27}}
	for gid, want := range map[uint32]bool{100: true, 4: true, 27: true, 0: false, 5: false} {
		if c.InGroup(gid) != want {
			t.Errorf("InGroup(%d) = %v, want %v", gid, !want, want)
		}
	}
	if got, ok := CallerFrom(WithCaller(context.Background(), c)); !ok || got.GID != 100 {
		t.Errorf("CallerFrom(WithCaller) = %+v, %v", got, ok)
	}
	if _, ok := CallerFrom(context.Background()); ok {
		t.Errorf("CallerFrom of a bare context reports a caller")
	}
}
