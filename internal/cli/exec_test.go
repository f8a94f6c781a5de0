package cli

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// fakeSignals is a daemon that only answers Control.Signal.
type fakeSignals struct {
	ssiv1connect.UnimplementedControlHandler
	got chan *ssiv1.SignalRequest
}

func (f *fakeSignals) Signal(_ context.Context, req *connect.Request[ssiv1.SignalRequest]) (*connect.Response[ssiv1.SignalResponse], error) {
	f.got <- req.Msg
	if req.Msg.Signal == int32(syscall.SIGUSR2) {
		return nil, connect.NewError(connect.CodeNotFound, os.ErrNotExist) // the job has just ended
	}
	return connect.NewResponse(&ssiv1.SignalResponse{Node: 2}), nil
}

func startFakeDaemon(t *testing.T, h ssiv1connect.ControlHandler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ssi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(ssiv1connect.NewControlHandler(h))
	srv := transport.NewUnixServer(mux)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// Signals that arrive before the job's cluster PID is known wait for it and
// go, in order, through Control.Signal; later ones go at once; SIGWINCH is
// a resize, not a signal; a job that just ended is no error.
func TestForwardSignalsQueuesUntilStarted(t *testing.T) {
	fake := &fakeSignals{got: make(chan *ssiv1.SignalRequest, 8)}
	sock := startFakeDaemon(t, fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errb bytes.Buffer
	stderr := &syncWriter{w: &errb}
	env := &Env{Prog: "onnode"}
	sigs := make(chan os.Signal, 8)
	cpids := make(chan int64, 1)
	resizes := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		forwardSignals(ctx, env, stderr, sock, sigs, cpids, resizes)
	}()

	sigs <- syscall.SIGINT
	sigs <- syscall.SIGWINCH
	sigs <- syscall.SIGTERM
	select {
	case <-resizes:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGWINCH did not become a resize")
	}
	cpids <- 2000005
	sigs <- syscall.SIGHUP
	sigs <- syscall.SIGUSR2
	for _, want := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR2} {
		select {
		case r := <-fake.got:
			if r.Cpid != 2000005 || r.Signal != int32(want) {
				t.Errorf("Control.Signal(%d, %d), want (2000005, %d)", r.Cpid, r.Signal, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%v was not forwarded", want)
		}
	}
	cancel()
	<-done
	select {
	case r := <-fake.got:
		t.Errorf("unexpected Control.Signal(%d, %d)", r.Cpid, r.Signal)
	default:
	}
	if s := errb.String(); s != "" {
		t.Errorf("stderr %q: a job that has ended is not worth a warning", s)
	}
}

// A signal the daemon cannot deliver is reported, and forwarding goes on.
func TestForwardSignalsReportsFailures(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	var errb bytes.Buffer
	stderr := &syncWriter{w: &errb}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	cpids := make(chan int64, 1)
	cpids <- 2000005
	sigs <- syscall.SIGINT
	done := make(chan struct{})
	go func() {
		defer close(done)
		forwardSignals(ctx, &Env{Prog: "onnode"}, stderr, sock, sigs, cpids, make(chan struct{}, 1))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		stderr.mu.Lock()
		s := errb.String()
		stderr.mu.Unlock()
		if strings.Contains(s, "onnode: could not forward interrupt to process 2000005: no ssi daemon is listening on "+sock) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning for an undeliverable signal: %q", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// The CLI passes its stdio only when attached, without a terminal, with
// three open files, and without SSI_STREAM_STDIO.
func TestPassableStdio(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	files := &Env{Stdin: r, Stdout: w, Stderr: w}
	if fds := passableStdio(files, execOpts{}); len(fds) != 3 || fds[0] != int(r.Fd()) || fds[1] != int(w.Fd()) {
		t.Fatalf("three open files: %v, want their descriptors", fds)
	}
	closed, _ := os.Open(os.DevNull)
	closed.Close()
	for what, c := range map[string]struct {
		env *Env
		o   execOpts
	}{
		"terminal":      {files, execOpts{tty: true}},
		"detached":      {files, execOpts{detach: true}},
		"buffer":        {&Env{Stdin: strings.NewReader(""), Stdout: w, Stderr: w}, execOpts{}},
		"closed stdout": {&Env{Stdin: r, Stdout: closed, Stderr: w}, execOpts{}},
		"fd 0 not open": {&Env{Stdin: os.NewFile(1000, "not open"), Stdout: w, Stderr: w}, execOpts{}},
	} {
		if fds := passableStdio(c.env, c.o); fds != nil {
			t.Errorf("%s: passes %v, want nothing", what, fds)
		}
	}
	t.Setenv("SSI_STREAM_STDIO", "1")
	if fds := passableStdio(files, execOpts{}); fds != nil {
		t.Errorf("SSI_STREAM_STDIO=1: passes %v, want nothing", fds)
	}
}
