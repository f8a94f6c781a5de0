package cfs

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// inFlight bounds the requests one session has running at once; the
// session stops reading until one finishes.
const inFlight = 128

// accept runs one request of a session in its own goroutine (or inline for
// acknowledgements and cancellations) and delivers the answer.
func (x *session) accept(r *ssiv1.FsRequest, slots chan struct{}) {
	switch r.Op {
	case ssiv1.FsOp_FS_OP_ACK:
		x.acked(r.Ack)
		return
	case ssiv1.FsOp_FS_OP_CANCEL:
		x.mu.Lock()
		c := x.cancels[r.Ack]
		x.mu.Unlock()
		if c != nil {
			c()
		}
		return
	case ssiv1.FsOp_FS_OP_HELLO: // a liveness probe
		_ = x.deliver(&ssiv1.FsMessage{Id: r.Id})
		return
	}
	if x.copies {
		// The server's copies are made one at a time, in the order sent.
		if err := x.deliver(x.serve(context.Background(), r)); err != nil {
			x.end(fmt.Errorf("cannot answer: %w", err))
		}
		return
	}
	slots <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	x.mu.Lock()
	if x.ended {
		x.mu.Unlock()
		cancel()
		<-slots
		return
	}
	x.cancels[r.Id] = cancel
	x.mu.Unlock()
	go func() {
		defer func() { <-slots }()
		m := x.serve(ctx, r)
		x.mu.Lock()
		delete(x.cancels, r.Id)
		x.mu.Unlock()
		cancel()
		if err := x.deliver(m); err != nil {
			x.end(fmt.Errorf("cannot answer: %w", err))
		}
	}()
}

// Service is the Cfs RPC service of a node: it serves sessions while this
// node's Server is set.
type Service struct {
	mu  sync.Mutex
	srv *Server
}

// Set makes s the server of this node (nil: this node does not serve).
func (v *Service) Set(s *Server) {
	v.mu.Lock()
	v.srv = s
	v.mu.Unlock()
}

func (v *Service) server() *Server {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.srv
}

var _ ssiv1connect.CfsHandler = (*Service)(nil)

// Session serves one client node's session until either side ends it.
func (v *Service) Session(ctx context.Context, st *connect.BidiStream[ssiv1.FsRequest, ssiv1.FsMessage]) error {
	srv := v.server()
	if srv == nil {
		return connect.NewError(connect.CodeUnavailable, errors.New("this node does not serve the cluster filesystem"))
	}
	node, ok := transport.PeerNumFrom(ctx)
	if !ok {
		return connect.NewError(connect.CodePermissionDenied, errors.New("a cluster node certificate is required"))
	}
	hello, err := st.Receive()
	if err != nil {
		return err
	}
	if hello.Op != ssiv1.FsOp_FS_OP_HELLO || hello.Node != node {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("a session starts with HELLO from node %d", node))
	}
	x, err := srv.open(node, st.Send, hello.Flags&helloCopies != 0)
	if err != nil {
		return connect.NewError(connect.CodeResourceExhausted, err)
	}
	if err := x.deliver(&ssiv1.FsMessage{Id: hello.Id}); err != nil {
		x.end(err)
		return err
	}
	srv.log.Info("cluster filesystem session started", "client", node)
	slots := make(chan struct{}, inFlight)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := st.Receive()
			if err != nil {
				errc <- err
				return
			}
			x.accept(r, slots)
		}
	}()
	select {
	case err = <-errc:
		x.end(fmt.Errorf("node %d closed its session: %w", node, err))
	case <-x.done:
		err = x.endErr
	case <-ctx.Done():
		x.end(ctx.Err())
		err = ctx.Err()
	}
	// The session has ended, so no answer is sent after this one finishes:
	// the stream must not be written once the handler returns.
	x.sendMu.Lock()
	x.sendMu.Unlock() //nolint:staticcheck // an empty critical section: waiting for a send in progress
	return connect.NewError(connect.CodeUnavailable, err)
}

// link is a client's connection to the server: a stream to another node,
// or the server in this very process.
type link interface {
	send(*ssiv1.FsRequest) error
	done() <-chan struct{}
	close()
}

// localLink reaches the Server of this process without a network.
type localLink struct {
	x     *session
	slots chan struct{}
}

func dialLocal(s *Server, self uint32, deliver func(*ssiv1.FsMessage)) (link, error) {
	x, err := s.open(self, func(m *ssiv1.FsMessage) error { deliver(m); return nil }, false)
	if err != nil {
		return nil, err
	}
	return &localLink{x: x, slots: make(chan struct{}, inFlight)}, nil
}

func (l *localLink) send(r *ssiv1.FsRequest) error {
	select {
	case <-l.x.done:
		return errors.New("session ended")
	default:
	}
	l.x.accept(r, l.slots)
	return nil
}
func (l *localLink) done() <-chan struct{} { return l.x.done }
func (l *localLink) close()                { l.x.end(errors.New("the client closed it")) }

// wireLink is a client's session over a stream of messages: a TLS
// connection of its own (dialConn) or a Connect stream (dialPeer).
type wireLink struct {
	write   func(*ssiv1.FsRequest) error
	receive func() (*ssiv1.FsMessage, error)
	shut    func()
	mu      sync.Mutex
	dead    chan struct{}
	once    sync.Once
}

// start says HELLO, delivers the answer, then every message until the
// stream ends. handshake, if set, is called with true before and false
// after the HELLO (to bound its wait).
func (l *wireLink) start(server, self, flags uint32, deliver func(*ssiv1.FsMessage), handshake func(bool)) (link, error) {
	l.dead = make(chan struct{})
	if handshake != nil {
		handshake(true)
	}
	if err := l.write(&ssiv1.FsRequest{Op: ssiv1.FsOp_FS_OP_HELLO, Node: self, Flags: flags}); err != nil {
		l.close()
		return nil, fmt.Errorf("open a cluster filesystem session with node %d: %w", server, err)
	}
	first, err := l.receive()
	if err != nil {
		l.close()
		return nil, fmt.Errorf("open a cluster filesystem session with node %d (does it serve the cluster filesystem?): %w", server, err)
	}
	if handshake != nil {
		handshake(false)
	}
	deliver(first)
	go func() {
		defer l.close()
		for {
			m, err := l.receive()
			if err != nil {
				return
			}
			deliver(m)
		}
	}()
	return l, nil
}

func dialPeer(ctx context.Context, net peer.Net, server, self, flags uint32, deliver func(*ssiv1.FsMessage)) (link, error) {
	conn, err := net.To(server)
	if err != nil {
		return nil, fmt.Errorf("reach node %d: %w", server, err)
	}
	cl := ssiv1connect.NewCfsClient(conn.HTTP, conn.URL, connect.WithReadMaxBytes(2*maxIO), connect.WithSendMaxBytes(2*maxIO))
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	st := cl.Session(sctx)
	l := &wireLink{write: st.Send, receive: st.Receive, shut: cancel}
	return l.start(server, self, flags, deliver, nil)
}

func (l *wireLink) send(r *ssiv1.FsRequest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.dead:
		return errors.New("session ended")
	default:
	}
	if err := l.write(r); err != nil {
		go l.close()
		return err
	}
	return nil
}

func (l *wireLink) done() <-chan struct{} { return l.dead }

func (l *wireLink) close() {
	l.once.Do(func() {
		l.shut()
		close(l.dead)
	})
}
