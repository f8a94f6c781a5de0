package transport

import (
	"net"
	"sync"
)

// Corked is a connection whose writes can be held back and sent as one:
// crypto/tls writes every record (at most 16 KiB) with a write(2) of its
// own, so a 256 KiB frame costs seventeen system calls and as many passes
// through the TCP stack. Between Cork and Flush, the records a TLS
// connection writes collect in a buffer (reused) and go out in one
// write(2). Uncorked, Write passes straight through.
//
// Every connection of the node's port and every connection of their own a
// node dials (peer.TLS.Dial) is a Corked under its TLS layer; only the
// protocols that batch (the exec stream, internal/procspace) cork it.
type Corked struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// NewCorked wraps c, uncorked.
func NewCorked(c net.Conn) *Corked { return &Corked{Conn: c} }

// maxCorked bounds what a corked connection holds: beyond it, Write flushes
// on its own (the caller's batch then takes two write(2) calls).
const maxCorked = 4 << 20

// Write writes b, or keeps it until Flush when corked.
func (c *Corked) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(b)
	}
	if len(c.buf)+len(b) > maxCorked {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	c.buf = append(c.buf, b...)
	return len(b), nil
}

// Cork holds back the writes that follow until Flush.
func (c *Corked) Cork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = true
}

// Flush writes what was held back, in one write(2) where the kernel takes
// it all, and uncorks.
func (c *Corked) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *Corked) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// corkedListener hands out its listener's connections as Corked.
type corkedListener struct{ net.Listener }

func (l corkedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return NewCorked(c), nil
}
