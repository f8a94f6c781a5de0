package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
)

// Caller is the identity of a local CLI process, from SO_PEERCRED.
type Caller struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, from /proc/PID/status
}

type callerKey struct{}

// CallerFrom returns the caller stored by the unix server.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// WithCaller stores a caller in a context (for tests and in-process calls).
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// ListenUnix opens the daemon's control socket at path with mode 0660,
// owned by group gid (-1 keeps the default), replacing a stale socket. Its
// connections are FDConns: they keep the descriptors a CLI passes.
func ListenUnix(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon is already serving %s", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("chown %s: %w", path, err)
		}
	}
	return fdListener{ln.(*net.UnixListener)}, nil
}

// ConnContext stores the peer credentials of a unix connection in the
// request context, and for an FDConn the connection, whose passed
// descriptors TakeFDs hands out; use it as http.Server.ConnContext.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*FDConn); ok {
		ctx = context.WithValue(ctx, fdConnKey{}, fc)
		c = fc.UnixConn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return ctx
	}
	caller := Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, Groups: procGroups(cred.Pid)}
	return WithCaller(ctx, caller)
}

func procGroups(pid int32) []uint32 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			var gs []uint32
			for _, f := range strings.Fields(rest) {
				if g, err := strconv.ParseUint(f, 10, 32); err == nil {
					gs = append(gs, uint32(g))
				}
			}
			return gs
		}
	}
	return nil
}

// InGroup reports whether the caller has gid as primary or supplementary group.
func (c Caller) InGroup(gid uint32) bool {
	if c.GID == gid {
		return true
	}
	for _, g := range c.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// AdminGroup is the name of the group whose members may change the node table.
const AdminGroup = "ssi"

// AdminGID returns the gid of the ssi group, or -1 when there is none.
func AdminGID() int {
	g, err := user.LookupGroup(AdminGroup)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1
	}
	return n
}

// NewUnixClient returns an HTTP client that talks HTTP/2 without TLS over the
// unix socket at path (the URL host is ignored).
func NewUnixClient(path string) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", path)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT) {
					return nil, fmt.Errorf("no ssi daemon is listening on %s (is it running? set --socket or SSI_SOCKET): %w", path, err)
				}
				return nil, fmt.Errorf("connect to the ssi daemon at %s: %w", path, err)
			}
			return c, nil
		},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: StreamWindow, MaxReceiveBufferPerConnection: ConnWindow}
	return &http.Client{Transport: tr}
}

// NewUnixServer returns an HTTP server for the control socket: HTTP/1.1 and
// unencrypted HTTP/2, with caller credentials in every request context.
func NewUnixServer(h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ConnContext: ConnContext, ReadHeaderTimeout: 10 * time.Second, HTTP2: HTTP2Config()}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// AuthorizeAdmin allows root, the daemon's own user and the ssi group to
// change the cluster; anyone else gets PermissionDenied saying what they
// tried to do.
func AuthorizeAdmin(ctx context.Context, what string) error {
	c, ok := CallerFrom(ctx)
	if !ok {
		return connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: the control socket gives no peer credentials"))
	}
	if c.UID == 0 || c.UID == uint32(os.Getuid()) {
		return nil
	}
	if gid := AdminGID(); gid >= 0 && c.InGroup(uint32(gid)) {
		return nil
	}
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("uid %d may not %s: only root and members of the %q group may change the cluster", c.UID, what, AdminGroup))
}
