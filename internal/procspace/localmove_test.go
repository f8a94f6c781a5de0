package procspace

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// A soft stop ends copyFDUntil only once its source is empty: what a
// frozen job wrote is all in the CLI's descriptor when Quiesce goes on.
func TestCopyFDUntilEmptiesTheSourceOnASoftStop(t *testing.T) {
	data := randomBytes(200 << 10)
	srcR, srcW := testPipe(t)
	dstR, dstW := testPipe(t)
	for _, f := range []int{rawFD(srcW), rawFD(dstW)} {
		if _, err := unix.FcntlInt(uintptr(f), unix.F_SETPIPE_SZ, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srcW.Write(data); err != nil {
		t.Fatal(err)
	}
	soft, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer soft.close()
	hard, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	defer hard.close()
	soft.stop() // before the copy even starts: the pipe still goes out
	rerr, werr := copyFDUntil(rawFD(dstW), rawFD(srcR), soft.fd, hard.fd, make([]byte, 64<<10))
	if !errors.Is(rerr, errStopped) || werr != nil {
		t.Fatalf("copyFDUntil: %v, %v; want errStopped, nil", rerr, werr)
	}
	if n := inq(rawFD(srcR)); n != 0 {
		t.Errorf("%d bytes left in the source", n)
	}
	dstW.Close()
	got, err := io.ReadAll(dstR)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("copied %d bytes, want the %d written", len(got), len(data))
	}
}

// The in-memory stream to this node: the job's side copies what it sends
// (its senders reuse their buffers), the relay closing its request is the
// job's EOF, and closing the response fails a send instead of blocking it.
func TestLocalExecStream(t *testing.T) {
	l := &localExec{in: make(chan *ssiv1.ExecInput), out: make(chan *ssiv1.ExecOutput),
		reqClosed: make(chan struct{}), respClosed: make(chan struct{}), served: make(chan struct{})}
	srv := localServer{l}
	buf := []byte("output")
	sent := make(chan error, 1)
	go func() { sent <- srv.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stdout{Stdout: buf}}) }()
	m, err := l.Receive()
	if err != nil || <-sent != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXXX")
	if string(m.GetStdout()) != "output" {
		t.Errorf("received %q after the sender reused its buffer; want a copy", m.GetStdout())
	}
	go func() { sent <- l.Send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Signal{Signal: 2}}) }()
	if in, err := srv.Receive(); err != nil || in.GetSignal() != 2 || <-sent != nil {
		t.Fatalf("the job's side received %v, %v", in, err)
	}
	_ = l.CloseRequest()
	if _, err := srv.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("after CloseRequest the job's side receives %v; want EOF", err)
	}
	_ = l.CloseResponse()
	if err := srv.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stdout{Stdout: buf}}); err == nil {
		t.Error("a send after CloseResponse succeeded")
	}
	close(l.served)
	if _, err := l.Receive(); err == nil {
		t.Error("the relay's side receives after the job's side is gone")
	}
}
