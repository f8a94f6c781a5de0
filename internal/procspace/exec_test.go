package procspace

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
)

// fakeStream is the far side of an exec stream. It hands over stdin EOF
// only once the exit has been sent, the moment at which the handler
// returns: an acknowledgement sent after that would write to a finished
// HTTP handler (which panics in net/http).
type fakeStream struct {
	mu       sync.Mutex
	exitSent chan struct{}
	returned atomic.Bool
	late     atomic.Int32 // Sends after the handler returned
	msgs     []*ssiv1.ExecOutput
	eofGiven bool
}

func (f *fakeStream) Receive() (*ssiv1.ExecInput, error) {
	f.mu.Lock()
	given := f.eofGiven
	f.eofGiven = true
	f.mu.Unlock()
	if given {
		select {} // the client stays; the handler must not wait for it
	}
	<-f.exitSent
	return &ssiv1.ExecInput{Seq: 1, Msg: &ssiv1.ExecInput_StdinEof{StdinEof: true}}, nil
}

func (f *fakeStream) Send(m *ssiv1.ExecOutput) error {
	if f.returned.Load() {
		f.late.Add(1)
		return errors.New("send after the handler returned")
	}
	f.mu.Lock()
	f.msgs = append(f.msgs, m)
	f.mu.Unlock()
	if m.GetExit() != nil {
		close(f.exitSent)
	}
	return nil
}

func TestRunLocalSendsNothingAfterItReturns(t *testing.T) {
	jobs, err := procs.NewManager(procs.Options{Node: 1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer jobs.Shutdown()
	s := New(Config{Self: 1, Name: "t1", Jobs: jobs})
	for i := 0; i < 20; i++ {
		f := &fakeStream{exitSent: make(chan struct{})}
		spec := &ssiv1.ExecSpec{Argv: []string{"/bin/true"}, Pin: true, Dir: "/", Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), HasCreds: true}
		if err := s.runLocal(context.Background(), spec, f, true, nil); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("runLocal: %v", err)
		}
		f.returned.Store(true)
		// Give a late acknowledgement every chance to show up.
		deadline := time.Now().Add(50 * time.Millisecond)
		for time.Now().Before(deadline) && f.late.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		if n := f.late.Load(); n != 0 {
			t.Fatalf("run %d: %d message(s) sent after runLocal returned", i, n)
		}
		var exit, started bool
		for _, m := range f.msgs {
			exit = exit || m.GetExit() != nil
			started = started || m.GetStarted() != nil
		}
		if !exit || !started {
			t.Fatalf("run %d: messages %v", i, f.msgs)
		}
	}
}
