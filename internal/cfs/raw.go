package cfs

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"google.golang.org/protobuf/proto"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// The session's own connection. Over the Connect stream (service.go) every
// message went through HTTP/2's goroutines and pipes on both sides, which
// cost more than the filesystem work of a small request
// (docs/PERFORMANCE.md). Between members with a TLS port of their own, a
// session is instead one mutually authenticated TLS connection (ALPN
// transport.ProtoCFS) carrying frames: a 4-byte big-endian length, then an
// FsRequest or FsMessage. The Connect stream stays for a network that
// opens no connections of its own (peer.Dialer), such as tests' memnet.

// maxFrame bounds a frame: a 1 MiB WRITE or READ and its fields.
const maxFrame = 2*maxIO + 64<<10

// writeTimeout bounds one frame's write: a peer that stops reading ends
// its session rather than holding the sender.
const writeTimeout = 30 * time.Second

func writeFrame(c net.Conn, m proto.Message) error {
	b := make([]byte, 4, 4+proto.Size(m))
	b, err := proto.MarshalOptions{}.MarshalAppend(b, m)
	if err != nil {
		return err
	}
	if len(b)-4 > maxFrame {
		return fmt.Errorf("a frame of %d bytes is larger than %d", len(b)-4, maxFrame)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = c.Write(b)
	return err
}

func readFrame(r io.Reader, buf *[]byte, m proto.Message) error {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > maxFrame {
		return fmt.Errorf("a frame of %d bytes is larger than %d", n, maxFrame)
	}
	if cap(*buf) < int(n) {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return proto.Unmarshal(b, m)
}

// ServeConns serves the sessions of ln's connections (transport's
// CFSListener) until ln is closed. A node that does not serve answers none.
func (v *Service) ServeConns(ln net.Listener, log *slog.Logger) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go v.serveConn(c, log)
	}
}

func (v *Service) serveConn(c net.Conn, log *slog.Logger) {
	defer c.Close()
	srv := v.server()
	node, ok := transport.PeerNumOf(c)
	if srv == nil || !ok {
		return
	}
	var buf []byte
	hello := &ssiv1.FsRequest{}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := readFrame(c, &buf, hello); err != nil || hello.Op != ssiv1.FsOp_FS_OP_HELLO || hello.Node != node {
		log.Warn("refused a cluster filesystem connection: it did not start with its own node's HELLO", "remote", c.RemoteAddr(), "node", node, "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	x, err := srv.open(node, func(m *ssiv1.FsMessage) error { return writeFrame(c, m) }, hello.Flags&helloCopies != 0)
	if err != nil {
		log.Warn("refused a cluster filesystem session", "node", node, "err", err)
		return
	}
	if err := x.deliver(&ssiv1.FsMessage{Id: hello.Id}); err != nil {
		x.end(err)
		return
	}
	log.Info("cluster filesystem session started", "client", node)
	go func() {
		<-x.done
		c.Close() // ends the read below
	}()
	slots := make(chan struct{}, inFlight)
	for {
		r := &ssiv1.FsRequest{}
		if err := readFrame(c, &buf, r); err != nil {
			x.end(fmt.Errorf("node %d closed its session: %w", node, err))
			return
		}
		x.accept(r, slots)
	}
}

// dialConn opens a session over a connection of its own.
func dialConn(ctx context.Context, d peer.Dialer, server, self, flags uint32, deliver func(*ssiv1.FsMessage)) (link, error) {
	c, err := d.Dial(ctx, server, transport.ProtoCFS)
	if err != nil {
		return nil, err
	}
	var buf []byte // the reader's, reused (Unmarshal copies out of it)
	l := &wireLink{
		write: func(r *ssiv1.FsRequest) error { return writeFrame(c, r) },
		receive: func() (*ssiv1.FsMessage, error) {
			m := &ssiv1.FsMessage{}
			return m, readFrame(c, &buf, m)
		},
		shut: func() { c.Close() },
	}
	return l.start(server, self, flags, deliver, func(on bool) {
		if on {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		} else {
			_ = c.SetReadDeadline(time.Time{})
		}
	})
}
