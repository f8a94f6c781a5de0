package migrate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// How a move copies: the caller's choice, else the size; a post-copy move
// needs fs.pipe-max-size >= 4 MiB: refused when asked for, a fallback (with
// its reason) when the size chose it.
func TestDecideCopy(t *testing.T) {
	big := func() (int, error) { return PostCopyPipeSize, nil }
	small := func() (int, error) { return 1 << 20, nil }
	broken := func() (int, error) { return 0, errors.New("reading fs.pipe-max-size: no /proc") }
	const above = 64 << 20
	for _, c := range []struct {
		name     string
		pref     copyPref
		rss      int64
		above    int64
		pipe     func() (int, error)
		post     bool
		fallback string // a substring; "" for none
		err      string // a substring; "" for none
	}{
		{"small job, auto", copyAuto, 1 << 20, above, big, false, "", ""},
		{"large job, auto", copyAuto, 200 << 20, above, big, true, "", ""},
		{"at the threshold", copyAuto, above, above, big, true, "", ""},
		{"auto off", copyAuto, 200 << 20, 0, big, false, "", ""},
		{"asked, small job", copyPost, 1 << 20, above, big, true, "", ""},
		{"forbidden, large job", copyPre, 200 << 20, above, big, false, "", ""},
		{"forbidden, pipes too small", copyPre, 200 << 20, above, small, false, "", ""},
		{"asked, pipes too small", copyPost, 200 << 20, above, small, false, "", "sysctl -w fs.pipe-max-size=4194304"},
		{"large, pipes too small", copyAuto, 200 << 20, above, small, false, "fs.pipe-max-size is 1048576", ""},
		{"large, sysctl unreadable", copyAuto, 200 << 20, above, broken, false, "no /proc", ""},
		{"asked, sysctl unreadable", copyPost, 200 << 20, above, broken, false, "", "no /proc"},
	} {
		d, err := decideCopy(c.pref, c.rss, c.above, c.pipe)
		switch {
		case c.err != "":
			if err == nil || !errors.Is(err, errPostCopy) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want errPostCopy with %q", c.name, err, c.err)
			}
			continue
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if d.post != c.post || (c.fallback == "") != (d.fallback == "") || !strings.Contains(d.fallback, c.fallback) {
			t.Errorf("%s: %+v, want post %v, fallback %q", c.name, d, c.post, c.fallback)
		}
	}
}

// migrate --postcopy and --precopy together are a bad request.
func TestCopyPrefOf(t *testing.T) {
	for q, want := range map[*ssiv1.MigrateRequest]copyPref{
		{}:                              copyAuto,
		{Postcopy: true}:                copyPost,
		{Precopy: true}:                 copyPre,
		{Postcopy: true, Precopy: true}: -1,
	} {
		got, err := copyPrefOf(q)
		if want == -1 {
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("%v: %v, want InvalidArgument", q, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%v: %v %v, want %v", q, got, err, want)
		}
	}
}

// The source serves a move's pages to the node it moves the job to, once,
// and only while the move is registered.
func TestPageSourcesClaim(t *testing.T) {
	var p pageSources
	a, b, err := socketPair("test")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	p.add("m1", &pageSource{to: 3, sock: a})
	if _, err := p.claim("m2", 3); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown move: %v", err)
	}
	if _, err := p.claim("m1", 2); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("another node: %v", err)
	}
	if s, err := p.claim("m1", 3); err != nil || s.sock != a {
		t.Errorf("the target: %v", err)
	}
	if _, err := p.claim("m1", 3); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("a second claim: %v", err)
	}
	p.remove("m1")
	if _, err := p.claim("m1", 3); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("after the move: %v", err)
	}
}

// chanStream is one side of an in-memory stream for pump.
type chanStream struct {
	in     chan []byte // what recv gives; closed: EOF
	out    chan []byte // what send sent
	err    atomic.Pointer[error]
	closed atomic.Bool
}

func newChanStream() *chanStream {
	return &chanStream{in: make(chan []byte, 16), out: make(chan []byte, 16)}
}

func (s *chanStream) send(b []byte) error {
	s.out <- bytes.Clone(b)
	return nil
}

func (s *chanStream) recv() ([]byte, error) {
	b, ok := <-s.in
	if !ok {
		if e := s.err.Load(); e != nil {
			return nil, *e
		}
		return nil, io.EOF
	}
	return b, nil
}

// pump copies both ways: what CRIU writes goes out, what comes in reaches
// CRIU; CRIU's end of its socket ends the sending side, the stream's end
// shuts CRIU's reading side, and both make a clean end.
func TestPumpCopies(t *testing.T) {
	mine, criu, err := socketPair("test")
	if err != nil {
		t.Fatal(err)
	}
	s := newChanStream()
	done := make(chan error, 1)
	go func() {
		done <- pump(mine, s.send, s.recv, func() { s.closed.Store(true) }, pumpIdle{limit: time.Minute, anySilence: true})
	}()
	if _, err := criu.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if got := <-s.out; string(got) != "request" {
		t.Errorf("sent %q", got)
	}
	s.in <- []byte("page data")
	close(s.in)
	got, err := io.ReadAll(criu) // up to the shut write side
	if err != nil || string(got) != "page data" {
		t.Errorf("CRIU read %q, %v", got, err)
	}
	criu.Close()
	if err := <-done; err != nil {
		t.Errorf("pump: %v", err)
	}
	if !s.closed.Load() {
		t.Error("the sending side was not closed when CRIU's socket ended")
	}
}

// A broken stream calls onLost before CRIU's socket closes (the target
// kills the job first), and is pump's error.
func TestPumpBrokenStream(t *testing.T) {
	mine, criu, err := socketPair("test")
	if err != nil {
		t.Fatal(err)
	}
	defer criu.Close()
	s := newChanStream()
	var lostWhileOpen atomic.Bool
	lost := func(error) {
		// CRIU's socket is still open: a write from its side works.
		_, err := criu.Write([]byte("x"))
		lostWhileOpen.Store(err == nil)
	}
	done := make(chan error, 1)
	go func() {
		done <- pump(mine, s.send, s.recv, func() {}, pumpIdle{limit: time.Minute, onLost: lost})
	}()
	broke := errors.New("stream reset")
	s.err.Store(&broke)
	close(s.in)
	if err := <-done; !errors.Is(err, broke) {
		t.Errorf("pump: %v, want the stream's error", err)
	}
	if !lostWhileOpen.Load() {
		t.Error("onLost did not run before CRIU's socket closed")
	}
	// CRIU's side sees the end (EOF, or a reset: its "x" was not read).
	if b, _ := io.ReadAll(criu); len(b) != 0 {
		t.Errorf("CRIU read %q after the break", b)
	}
}

// Silence: the target's pump gives up once armed when an answer does not
// come; bytes in reset it.
func TestPumpIdleSilence(t *testing.T) {
	var armed atomic.Bool
	idle := pumpIdle{limit: 10 * time.Second, armed: &armed}
	sec := int64(time.Second)
	if d := idle.silence(100*sec, 0, 50*sec); d != 0 {
		t.Errorf("not armed: %v", d)
	}
	armed.Store(true)
	if d := idle.silence(100*sec, 0, 50*sec); d != 50*time.Second {
		t.Errorf("armed, waiting since 50 s: %v", d)
	}
	if d := idle.silence(100*sec, 60*sec, 50*sec); d != 0 {
		t.Errorf("answered: %v", d)
	}
	src := pumpIdle{limit: 30 * time.Second, anySilence: true}
	if d := src.silence(100*sec, 60*sec, 90*sec); d != 10*time.Second {
		t.Errorf("source, 10 s since the last bytes: %v", d)
	}
}

// A pump whose peer says nothing while an answer is awaited breaks, calls
// onLost and ends, even with its receiving side stuck.
func TestPumpGivesUpOnSilence(t *testing.T) {
	mine, criu, err := socketPair("test")
	if err != nil {
		t.Fatal(err)
	}
	defer criu.Close()
	s := newChanStream()
	var armed atomic.Bool
	armed.Store(true)
	lost := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		done <- pump(mine, s.send, s.recv, func() {}, pumpIdle{limit: 200 * time.Millisecond, armed: &armed, onLost: func(err error) { lost <- err }})
	}()
	if _, err := criu.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	<-s.out
	select {
	case err := <-done:
		if !errors.Is(err, errPageSilence) {
			t.Errorf("pump: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pump did not give up")
	}
	if err := <-lost; !errors.Is(err, errPageSilence) {
		t.Errorf("onLost got %v", err)
	}
	close(s.in)
}

// The target counts its source as lost only while the lazy-pages daemon
// still waits for pages: once it has exited with every page, a stream that
// ends badly changes nothing; before, the loss is kept for the job restored
// next (which restoredJob then kills).
func TestPostCopyTargetLost(t *testing.T) {
	done := &postCopyTarget{lp: &lazyPages{exit: make(chan error, 1)}}
	done.lp.exit <- nil
	done.lost(errors.New("stream reset"))
	if done.lostErr != nil {
		t.Errorf("after the daemon had every page: lost %v", done.lostErr)
	}
	waiting := &postCopyTarget{lp: &lazyPages{exit: make(chan error, 1)}}
	broke := errors.New("stream reset")
	waiting.lost(broke)
	waiting.lost(errors.New("a second one"))
	if waiting.lostErr != broke {
		t.Errorf("while pages were coming: lost %v, want the first loss", waiting.lostErr)
	}
}

// A --net job moves pre-copy: --postcopy is refused, the size does not
// make it post-copy.
func TestPostCopyNotForNetJobs(t *testing.T) {
	m := &Migrator{cfg: Config{Self: 2}}
	_, _, err := m.preparePostCopy(withCopyPref(context.Background(), copyPost), nil, nil, "", "", true)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !errors.Is(err, errPostCopy) {
		t.Errorf("--postcopy of a --net job: %v, want a refusal", err)
	}
	pc, fallback, err := m.preparePostCopy(context.Background(), nil, nil, "", "", true)
	if pc != nil || fallback != "" || err != nil {
		t.Errorf("a --net job, by size: %v %q %v, want pre-copy", pc, fallback, err)
	}
}
