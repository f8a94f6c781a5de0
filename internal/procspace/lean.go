package procspace

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// The exec stream's own connection. Over the Connect stream every output
// chunk went through HTTP/2's framing, flow control and goroutines on both
// daemons and was copied into a protobuf envelope (docs/PERFORMANCE.md:
// TLS writes, HTTP/2 frame reading and memmove took most of the time).
// Between daemons that both offer it, a relayed exec stream is instead one
// mutually authenticated TLS connection of its own (ALPN
// transport.ProtoExec) carrying frames:
//
//	kind (1 byte) | seq (8 bytes, big-endian) | length (4 bytes) | payload
//
// Stdin, stdout and stderr travel as raw bytes with the sequence number the
// relay gives them (ExecInput.seq, ExecOutput.seq); everything else (start,
// attach, stdin_eof, signals, resizes, started, acknowledgements, moved,
// exit, errors) is an ExecInput or ExecOutput in protobuf, as on the
// Connect stream, whose seq the message carries itself. The sequence
// numbers and acknowledgements are the relay's own, so a stream over this
// connection follows its process on a migration (move.go) exactly as one
// over Connect. A large data frame goes out corked (transport.Corked): its
// TLS records leave in one write(2). Buffers are reused on both sides: the
// receiver of output hands out a chunk that is valid until its next
// Receive (the relay writes it out before that).
//
// A node whose network opens no connections of its own (memnet in unit
// tests), or a peer that does not offer the protocol (an older release),
// gets the Connect stream (openExec): a mixed-version cluster keeps
// working.

// Frame kinds.
const (
	kindInput  = 1 // an ExecInput, protobuf
	kindOutput = 2 // an ExecOutput, protobuf
	kindStdin  = 3 // stdin bytes, raw
	kindStdout = 4 // stdout bytes, raw
	kindStderr = 5 // stderr bytes, raw
)

const (
	frameHead = 13
	// maxFrame bounds a frame's payload, as the Connect stream bounds a
	// message (streamMessage in internal/node).
	maxFrame = 1 << 20
	// smallFrame: a payload up to this goes out in one buffer with its
	// header (one TLS record); a larger one is corked.
	smallFrame = 16 << 10
	// helloTimeout bounds the wait for a connection's first frame.
	helloTimeout = 10 * time.Second
	// lingerTimeout bounds how long a finished stream's connection waits
	// for the relay to close its side (so that the end is not lost to a
	// reset).
	lingerTimeout = 5 * time.Second
	// refusedFor is how long a node whose exec port refused the protocol
	// gets the Connect stream without being asked again.
	refusedFor = 30 * time.Second
)

var errFrame = errors.New("malformed exec stream frame")

// frameConn reads and writes frames on one connection. Writes are
// serialized; reads are the one receiver's.
type frameConn struct {
	c    net.Conn
	cork *transport.Corked // nil: the connection has none (tests' pipes)

	wmu   sync.Mutex
	whead [frameHead]byte
	wbuf  []byte // small frames and protobuf, reused

	r     *bufio.Reader
	rhead [frameHead]byte
}

func newFrameConn(c net.Conn) *frameConn {
	f := &frameConn{c: c, r: bufio.NewReaderSize(c, 64<<10)}
	f.cork, _ = transport.CorkedOf(c)
	return f
}

func putHead(b []byte, kind byte, seq uint64, n int) {
	b[0] = kind
	binary.BigEndian.PutUint64(b[1:9], seq)
	binary.BigEndian.PutUint32(b[9:13], uint32(n))
}

// writeMsg writes m as a frame of kind.
func (f *frameConn) writeMsg(kind byte, m proto.Message) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	b, err := proto.MarshalOptions{}.MarshalAppend(append(f.wbuf[:0], f.whead[:]...), m)
	if err != nil {
		return err
	}
	if len(b)-frameHead > maxFrame {
		return fmt.Errorf("a message of %d bytes is larger than %d", len(b)-frameHead, maxFrame)
	}
	putHead(b, kind, 0, len(b)-frameHead)
	f.wbuf = b[:0]
	_, err = f.c.Write(b)
	return err
}

// writeData writes data as a raw frame of kind numbered seq; data is not
// kept.
func (f *frameConn) writeData(kind byte, seq uint64, data []byte) error {
	if len(data) > maxFrame {
		return fmt.Errorf("a chunk of %d bytes is larger than %d", len(data), maxFrame)
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if len(data) <= smallFrame {
		b := append(f.wbuf[:0], f.whead[:]...)
		putHead(b, kind, seq, len(data))
		b = append(b, data...)
		f.wbuf = b[:0]
		_, err := f.c.Write(b)
		return err
	}
	putHead(f.whead[:], kind, seq, len(data))
	if f.cork != nil {
		f.cork.Cork()
	}
	_, err := f.c.Write(f.whead[:])
	if err == nil {
		_, err = f.c.Write(data)
	}
	if f.cork != nil {
		if ferr := f.cork.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

// next reads the next frame's header.
func (f *frameConn) next() (kind byte, seq uint64, n int, err error) {
	if _, err := io.ReadFull(f.r, f.rhead[:]); err != nil {
		return 0, 0, 0, err
	}
	kind = f.rhead[0]
	seq = binary.BigEndian.Uint64(f.rhead[1:9])
	size := binary.BigEndian.Uint32(f.rhead[9:13])
	if size > maxFrame {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes, more than %d", errFrame, size, maxFrame)
	}
	return kind, seq, int(size), nil
}

// payload reads the n bytes of the current frame into *buf (grown once).
func (f *frameConn) payload(buf *[]byte, n int) ([]byte, error) {
	if cap(*buf) < n {
		*buf = make([]byte, max(n, 64<<10))
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(f.r, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

// closeWrite tells the other side that nothing more comes (its Receive
// sees io.EOF), keeping the receiving side open.
func (f *frameConn) closeWrite() error {
	if cw, ok := f.c.(interface{ CloseWrite() error }); ok {
		f.wmu.Lock()
		defer f.wmu.Unlock()
		return cw.CloseWrite()
	}
	return f.c.Close()
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// remoteStream is the relay's side of an exec stream to the node that runs
// the process: the Connect stream (connect.BidiStreamForClient) or the
// exec stream's own connection (leanClient).
type remoteStream interface {
	Send(*ssiv1.ExecInput) error
	Receive() (*ssiv1.ExecOutput, error)
	CloseRequest() error
	CloseResponse() error
}

var _ remoteStream = (*connect.BidiStreamForClient[ssiv1.ExecInput, ssiv1.ExecOutput])(nil)

// leanClient is the relay's side of an exec stream's own connection.
type leanClient struct {
	f   *frameConn
	buf []byte // the payload read last
	// Output chunks come back in these, reused: valid until the next
	// Receive.
	out    ssiv1.ExecOutput
	stdout ssiv1.ExecOutput_Stdout
	stderr ssiv1.ExecOutput_Stderr
}

func newLeanClient(c net.Conn) *leanClient { return &leanClient{f: newFrameConn(c)} }

func (l *leanClient) Send(m *ssiv1.ExecInput) error {
	if in, ok := m.Msg.(*ssiv1.ExecInput_Stdin); ok {
		return l.f.writeData(kindStdin, m.Seq, in.Stdin)
	}
	return l.f.writeMsg(kindInput, m)
}

// Receive returns the next message; a stdout or stderr chunk is valid
// until the next call.
func (l *leanClient) Receive() (*ssiv1.ExecOutput, error) {
	kind, seq, n, err := l.f.next()
	if err != nil {
		return nil, err
	}
	b, err := l.f.payload(&l.buf, n)
	if err != nil {
		return nil, err
	}
	switch kind {
	case kindOutput:
		m := &ssiv1.ExecOutput{}
		if err := proto.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("%w: %v", errFrame, err)
		}
		return m, nil
	case kindStdout:
		l.stdout.Stdout = b
		l.out.Msg = &l.stdout
	case kindStderr:
		l.stderr.Stderr = b
		l.out.Msg = &l.stderr
	default:
		return nil, fmt.Errorf("%w: kind %d towards the relay", errFrame, kind)
	}
	l.out.Seq = seq
	return &l.out, nil
}

func (l *leanClient) CloseRequest() error  { return l.f.closeWrite() }
func (l *leanClient) CloseResponse() error { return l.f.c.Close() }

// leanServer is the side of an exec stream's own connection on the node
// that runs the process (an execStream for runLocal and attach).
type leanServer struct {
	f *frameConn

	rmu  sync.Mutex // Receive and linger
	rerr error      // the first read failure: every later Receive returns it
	buf  []byte
	// Stdin chunks are cut from the free tail of a slab: the stdin queue
	// keeps each without a copy, and a slab is garbage once all of its
	// chunks were written into the job.
	slab []byte
}

func newLeanServer(c net.Conn) *leanServer { return &leanServer{f: newFrameConn(c)} }

func (l *leanServer) Receive() (*ssiv1.ExecInput, error) {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	if l.rerr != nil {
		return nil, l.rerr
	}
	m, err := l.receive()
	if err != nil {
		l.rerr = err
	}
	return m, err
}

func (l *leanServer) receive() (*ssiv1.ExecInput, error) {
	kind, seq, n, err := l.f.next()
	if err != nil {
		return nil, err
	}
	switch kind {
	case kindInput:
		b, err := l.f.payload(&l.buf, n)
		if err != nil {
			return nil, err
		}
		m := &ssiv1.ExecInput{}
		if err := proto.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("%w: %v", errFrame, err)
		}
		return m, nil
	case kindStdin:
		if len(l.slab) < n {
			l.slab = make([]byte, max(n, 4*chunkSize))
		}
		b := l.slab[:n:n]
		l.slab = l.slab[n:]
		if _, err := io.ReadFull(l.f.r, b); err != nil {
			return nil, unexpected(err)
		}
		return &ssiv1.ExecInput{Seq: seq, Msg: &ssiv1.ExecInput_Stdin{Stdin: b}}, nil
	}
	return nil, fmt.Errorf("%w: kind %d towards the process", errFrame, kind)
}

// Send writes m; it keeps nothing of it once it returns.
func (l *leanServer) Send(m *ssiv1.ExecOutput) error {
	switch v := m.Msg.(type) {
	case *ssiv1.ExecOutput_Stdout:
		return l.f.writeData(kindStdout, m.Seq, v.Stdout)
	case *ssiv1.ExecOutput_Stderr:
		return l.f.writeData(kindStderr, m.Seq, v.Stderr)
	}
	return l.f.writeMsg(kindOutput, m)
}

// linger ends a served stream: it says nothing more comes and reads (and
// drops) what the relay still sends until it closes its side, at most
// lingerTimeout, so that the last frames are not lost to a reset of a
// connection closed with unread input.
func (l *leanServer) linger() {
	_ = l.f.closeWrite()
	_ = l.f.c.SetReadDeadline(time.Now().Add(lingerTimeout))
	for {
		if _, err := l.Receive(); err != nil {
			return
		}
	}
}

// ServeConns serves the exec streams of ln's connections (transport's
// ExecListener) until ln is closed.
func (p *Service) ServeConns(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.serveConn(c)
	}
}

func (p *Service) serveConn(c net.Conn) {
	defer c.Close()
	node, ok := transport.PeerNumOf(c)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(transport.WithPeerNum(context.Background(), node))
	defer cancel()
	st := newLeanServer(c)
	defer st.linger()
	_ = c.SetReadDeadline(time.Now().Add(helloTimeout))
	first, err := st.Receive()
	if err != nil {
		p.s.log.Debug("an exec stream connection ended before its first message", "node", node, "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if err := p.s.serveExec(ctx, first, st); err != nil {
		p.s.log.Debug("exec stream ended", "node", node, "err", err)
	}
}

// streamCounts counts the exec streams this node relayed to another node,
// by transport (metrics.go).
type streamCounts struct {
	own, rpc atomic.Uint64
}

// refusals remembers the nodes whose port refused the exec stream's own
// protocol (an older release), until when.
type refusals struct {
	mu sync.Mutex
	m  map[uint32]time.Time
}

func (r *refusals) refused(num uint32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	until, ok := r.m[num]
	if ok && time.Now().After(until) {
		delete(r.m, num)
		return false
	}
	return ok
}

func (r *refusals) refuse(num uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[uint32]time.Time{}
	}
	r.m[num] = time.Now().Add(refusedFor)
}

// openExec opens an exec stream to node num: a connection of its own where
// this node is configured so (Config.OwnStreams), the network opens them
// and the node speaks the protocol, else the Connect stream. Either ends when ctx does.
func (s *Space) openExec(ctx context.Context, num uint32) (remoteStream, error) {
	if num == s.cfg.Self {
		return s.openLocal(ctx), nil // localmove.go
	}
	if d, ok := s.cfg.Net.(peer.Dialer); ok && s.cfg.OwnStreams && !s.refused.refused(num) {
		c, err := d.Dial(ctx, num, transport.ProtoExec)
		if err == nil {
			s.streams.own.Add(1)
			context.AfterFunc(ctx, func() { c.Close() })
			return newLeanClient(c), nil
		}
		s.refused.refuse(num)
		s.log.Info("node does not take an exec stream of its own; using RPC", "node", num, "err", err)
	}
	client, err := s.clients.To(num)
	if err != nil {
		return nil, err
	}
	s.streams.rpc.Add(1)
	return client.Exec(ctx), nil
}
