package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// MaxPassedFDs is how many file descriptors the control socket keeps from
// one connection (a CLI's stdin, stdout and stderr); any beyond are closed.
const MaxPassedFDs = 3

// FDConn is an accepted control-socket connection that keeps the file
// descriptors its peer sends as SCM_RIGHTS ancillary data (received with
// MSG_CMSG_CLOEXEC), at most MaxPassedFDs per connection. A request
// handler takes them with TakeFDs; what nobody took is closed with the
// connection. A connection without descriptors reads as a plain one.
type FDConn struct {
	*net.UnixConn

	mu     sync.Mutex
	fds    []*os.File
	kept   int // descriptors kept so far, taken or not
	closed bool
}

// NewFDConn wraps an accepted unix connection.
func NewFDConn(c *net.UnixConn) *FDConn {
	return &FDConn{UnixConn: c}
}

// oobSize holds one SCM_RIGHTS message of MaxPassedFDs descriptors.
var oobSize = unix.CmsgSpace(4 * MaxPassedFDs)

// Read reads data and keeps the descriptors that came with it. The control
// buffer holds MaxPassedFDs descriptors: the kernel never installs more
// (MSG_CTRUNC), and any over the per-connection bound are closed at once.
func (c *FDConn) Read(b []byte) (int, error) {
	oob := make([]byte, oobSize)
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if oobn > 0 {
		c.keep(oob[:oobn])
	}
	return n, err
}

func (c *FDConn) keep(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		c.mu.Lock()
		for _, fd := range fds {
			if c.closed || c.kept >= MaxPassedFDs {
				_ = unix.Close(fd)
				continue
			}
			c.kept++
			c.fds = append(c.fds, os.NewFile(uintptr(fd), fmt.Sprintf("passed-fd-%d", c.kept-1)))
		}
		c.mu.Unlock()
	}
}

// TakeFDs hands the descriptors received so far to the caller, who closes
// them; a second call returns none.
func (c *FDConn) TakeFDs() []*os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	fds := c.fds
	c.fds = nil
	return fds
}

// Close closes the connection and every descriptor nobody took.
func (c *FDConn) Close() error {
	c.mu.Lock()
	fds := c.fds
	c.fds, c.closed = nil, true
	c.mu.Unlock()
	for _, f := range fds {
		_ = f.Close()
	}
	return c.UnixConn.Close()
}

type fdConnKey struct{}

// TakeFDs returns the descriptors the peer of the request's connection
// passed (see FDConn), in the order it sent them; the caller owns and
// closes them. None when the connection is not an FDConn.
func TakeFDs(ctx context.Context) []*os.File {
	c, _ := ctx.Value(fdConnKey{}).(*FDConn)
	if c == nil {
		return nil
	}
	return c.TakeFDs()
}

// fdListener makes every accepted connection an FDConn.
type fdListener struct{ *net.UnixListener }

func (l fdListener) Accept() (net.Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return NewFDConn(c), nil
}

// sendFDConn sends its descriptors with the first write (for HTTP/2, the
// client preface), so they are on the connection before any request.
type sendFDConn struct {
	*net.UnixConn
	once sync.Once
	fds  []int
}

func (c *sendFDConn) Write(b []byte) (int, error) {
	var n int
	var err error
	sent := false
	c.once.Do(func() {
		sent = true
		var oobn int
		n, oobn, err = c.WriteMsgUnix(b, unix.UnixRights(c.fds...), nil)
		if err == nil && oobn == 0 {
			err = errors.New("the descriptors were not sent")
		}
		if err == nil && n < len(b) {
			var m int
			m, err = c.UnixConn.Write(b[n:])
			n += m
		}
	})
	if sent {
		return n, err
	}
	return c.UnixConn.Write(b)
}

// NewUnixFDClient is NewUnixClient whose connection passes fds (such as
// the CLI's 0, 1 and 2) to the daemon as SCM_RIGHTS with its first bytes.
// Use it for one request: every connection it opens passes them again.
func NewUnixFDClient(path string, fds []int) *http.Client {
	c := NewUnixClient(path)
	tr := c.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			return conn, nil
		}
		return &sendFDConn{UnixConn: uc, fds: fds}, nil
	}
	return c
}
