package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
)

// The page traffic of a post-copy move: CRIU's page server on the source
// and its lazy-pages daemon on the target each have a unix socket to their
// own daemon; the target's daemon opens PostCopy.Pages to the source's, and
// each side copies what its CRIU writes into the stream and what the stream
// brings into its CRIU. The stream is an ordinary member-to-member call: a
// cluster certificate on both ends (mTLS), and the source serves only the
// node it is moving that job to, once.

// pageChunk bounds the data of one PageBytes message (the endpoint reads
// messages of up to twice chunkSize).
const pageChunk = chunkSize

// pageIdle: the target gives up on its source when it has waited this long
// for an answer to a page request; the source gives up on a target that
// sent nothing for pageIdleSource. A lazy-pages daemon asks without pause
// until it has every page, so silence means a node lost (or stopped).
var (
	pageIdle       = 10 * time.Second
	pageIdleSource = 30 * time.Second
)

// pageSource is a post-copy move this node is the source of.
type pageSource struct {
	to      uint32
	sock    *os.File // the daemon's end of CRIU's page-server socket
	claimed atomic.Bool
	ended   chan error // the page stream's end (nil: both sides closed it cleanly), once
}

// cleanEnd reports whether the page stream ended with both sides closing
// it, waiting a little for its end.
func (s *pageSource) cleanEnd(wait time.Duration) bool {
	select {
	case err := <-s.ended:
		s.ended <- err
		return err == nil
	case <-time.After(wait):
		return false
	}
}

// pageSources are the moves whose pages this node serves, by move id.
type pageSources struct{ m sync.Map }

func (p *pageSources) add(id string, s *pageSource) { p.m.Store(id, s) }
func (p *pageSources) remove(id string)             { p.m.Delete(id) }

// claim returns the move id's source for node from, once.
func (p *pageSources) claim(id string, from uint32) (*pageSource, error) {
	v, ok := p.m.Load(id)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no post-copy move %q here", id))
	}
	s := v.(*pageSource)
	if s.to != from {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d asks for the pages of a move to node %d", from, s.to))
	}
	if !s.claimed.CompareAndSwap(false, true) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the pages of move %q are being sent already", id))
	}
	return s, nil
}

// PostCopyService serves PostCopy to the other members.
type PostCopyService struct{ m *Migrator }

var _ ssiv1connect.PostCopyHandler = (*PostCopyService)(nil)

// PostCopy is the PostCopy service.
func (m *Migrator) PostCopy() *PostCopyService { return &PostCopyService{m: m} }

// Pages, on the source: the target's lazy-pages daemon's requests in,
// the page server's answers out.
func (s *PostCopyService) Pages(ctx context.Context, st *connect.BidiStream[ssiv1.PageBytes, ssiv1.PageBytes]) error {
	m := s.m
	from, err := peerNode(ctx, st.RequestHeader())
	if err != nil {
		return err
	}
	first, err := st.Receive()
	if err != nil {
		return err
	}
	src, err := m.pages.claim(first.MoveId, from)
	if err != nil {
		return err
	}
	if len(first.Data) > 0 {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("the first message names the move only"))
	}
	delay := testPageDelay()
	err = pump(src.sock, func(b []byte) error {
		if delay > 0 {
			time.Sleep(delay)
		}
		return st.Send(&ssiv1.PageBytes{Data: b})
	},
		func() ([]byte, error) {
			p, err := st.Receive()
			if err != nil {
				return nil, err
			}
			return p.Data, nil
		}, func() {}, pumpIdle{limit: pageIdleSource, anySilence: true})
	src.ended <- err
	if err != nil {
		m.log.Warn("the page traffic of a post-copy move broke", "to", from, "err", err)
		return m.fail(err)
	}
	return nil
}

// testPageDelay is how long the source waits before each message of page
// data: SSI_TEST_PAGE_DELAY (a duration), for the e2e test that loses the
// source in the middle of a post-copy move; 0 otherwise.
func testPageDelay() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("SSI_TEST_PAGE_DELAY"))
	return max(d, 0)
}

// openPages, on the target: the Pages stream of move id to node from,
// relayed to sock (the lazy-pages daemon's). lost is called before sock is
// closed when the source is lost before the daemon has every page; armed
// tells when the restore is done, from which silence counts.
func (m *Migrator) openPages(ctx context.Context, from uint32, id string, sock *os.File, lost func(error), armed *atomic.Bool) (chan error, error) {
	cl, err := m.pcClients.To(from)
	if err != nil {
		return nil, fmt.Errorf("node %d: %w", from, err)
	}
	st := cl.Pages(ctx)
	if err := st.Send(&ssiv1.PageBytes{MoveId: id}); err != nil {
		_ = st.CloseRequest()
		_ = st.CloseResponse()
		return nil, fmt.Errorf("node %d: opening the page stream: %w", from, err)
	}
	done := make(chan error, 1)
	go func() {
		err := pump(sock, func(b []byte) error { return st.Send(&ssiv1.PageBytes{Data: b}) },
			func() ([]byte, error) {
				p, err := st.Receive()
				if err != nil {
					return nil, err
				}
				return p.Data, nil
			}, func() { _ = st.CloseRequest() }, pumpIdle{limit: pageIdle, armed: armed, onLost: lost})
		_ = st.CloseResponse()
		done <- err
	}()
	return done, nil
}

// pumpIdle is when a pump gives up on silence: after limit without a byte
// from the stream, either at any time (anySilence), or while an answer is
// awaited (bytes went out since the last came in) once armed is set.
// onLost runs before the socket closes.
type pumpIdle struct {
	limit      time.Duration
	anySilence bool
	armed      *atomic.Bool
	onLost     func(error)
}

// errPageSilence: the other side said nothing for too long.
var errPageSilence = errors.New("the other node sent no page data")

// pump copies between sock and a stream until both directions end: what
// sock gives goes to send (closeSend when sock ends), what recv gives goes
// to sock (its write side shut when the stream ends). A broken stream, or
// silence (idle), closes sock, after idle.onLost, and is the error.
func pump(sock *os.File, send func([]byte) error, recv func() ([]byte, error), closeSend func(), idle pumpIdle) error {
	var lastIn, lastOut atomic.Int64
	now := func() int64 { return time.Now().UnixNano() }
	lastIn.Store(now())
	errs := make(chan error, 3)
	var once sync.Once
	broken := func(err error) {
		once.Do(func() {
			if idle.onLost != nil {
				idle.onLost(err)
			}
			sock.Close()
		})
	}
	go func() { // CRIU -> stream
		buf := make([]byte, pageChunk)
		for {
			n, err := sock.Read(buf)
			if n > 0 {
				lastOut.Store(now())
				if serr := send(buf[:n]); serr != nil {
					errs <- fmt.Errorf("sending page data: %w", serr)
					return
				}
			}
			if err != nil {
				closeSend()
				if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
					errs <- nil
				} else {
					errs <- fmt.Errorf("reading from CRIU: %w", err)
				}
				return
			}
		}
	}()
	go func() { // stream -> CRIU
		for {
			b, err := recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					shutWrite(sock)
					errs <- nil
				} else {
					errs <- fmt.Errorf("receiving page data: %w", err)
				}
				return
			}
			lastIn.Store(now())
			if _, err := sock.Write(b); err != nil {
				errs <- fmt.Errorf("writing to CRIU: %w", err)
				return
			}
		}
	}()
	tick := time.NewTicker(idle.limit / 10)
	defer tick.Stop()
	var first error
	for pending := 2; pending > 0; {
		select {
		case err := <-errs:
			pending--
			if err != nil && first == nil {
				first = err
				broken(err)
			}
		case <-tick.C:
			if silence := idle.silence(now(), lastIn.Load(), lastOut.Load()); silence > idle.limit && first == nil {
				first = fmt.Errorf("%w for %v", errPageSilence, silence.Round(time.Second))
				broken(first)
				// The receiving goroutine may be stuck in recv: the
				// caller ends the stream.
				return first
			}
		}
	}
	if first == nil {
		sock.Close()
	}
	return first
}

// silence is how long the pump has waited for the other side, at now,
// given the times of the last bytes in and out: since either, with
// anySilence; else, once armed, since the last bytes out if no answer came
// after them; else nothing.
func (idle pumpIdle) silence(now, in, out int64) time.Duration {
	switch {
	case idle.anySilence:
		return time.Duration(now - max(in, out))
	case idle.armed != nil && idle.armed.Load() && out > in:
		return time.Duration(now - out)
	}
	return 0
}

// shutWrite tells the socket's peer that nothing more comes (without Fd,
// which would make the socket blocking).
func shutWrite(sock *os.File) {
	if rc, err := sock.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) })
	}
}
