package migrate

import (
	"bytes"
	"os"
	"slices"
	"testing"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procspace"
)

// Where an attached job's stream stopped on the old node reaches the new
// one whole: its stdin and signal counts too (the new node once started
// its acknowledged count at 0), and a terminal job's terminal.
func TestStreamStateCrossesAMove(t *testing.T) {
	ms := &procspace.MoveState{OutSeq: 9, StdinAcked: 7, CtlAcked: 3, StdinPending: []byte("ab"),
		TTYKey: "tty[8800:19]", Termios: []byte{1, 2, 3}, Rows: 30, Cols: 100}
	pipes, ext, err := streamKeys(1000001, ms)
	if err != nil || pipes != nil || !slices.Equal(ext, []string{"tty[8800:19]"}) {
		t.Fatalf("keys of a terminal job: %v, %v, %v", pipes, ext, err)
	}
	h := &ssiv1.MigrateHeader{}
	streamHeader(h, ms, pipes)
	if !h.Attached || !h.Tty || h.TtyKey != ms.TTYKey || !bytes.Equal(h.Termios, ms.Termios) || h.Rows != 30 || h.Cols != 100 {
		t.Errorf("header of a terminal job: %v", h)
	}
	term := &procspace.Terminal{}
	a := arrivalOf(h, [3]*os.File{}, term)
	if a.OutSeq != 9 || a.StdinAcked != 7 || a.CtlAcked != 3 || a.TTY != term || string(a.StdinPending) != "ab" {
		t.Errorf("arrival %+v: want output 9, stdin 7, signals 3 and the unread input", a)
	}
	// A pipe job's unread stdin goes into its new pipe before the
	// restore, not again after.
	ms = &procspace.MoveState{Keys: [3]string{"pipe:[1]", "pipe:[2]", "pipe:[3]"}, StdinAcked: 4, StdinPending: []byte("x")}
	pipes, ext, err = streamKeys(1000001, ms)
	if err != nil || len(pipes) != 3 || ext != nil {
		t.Fatalf("keys of a pipe job: %v, %v, %v", pipes, ext, err)
	}
	h = &ssiv1.MigrateHeader{}
	streamHeader(h, ms, pipes)
	if a := arrivalOf(h, [3]*os.File{}, nil); a.StdinAcked != 4 || a.StdinPending != nil || h.Tty {
		t.Errorf("arrival of a pipe job %+v (header tty %v)", a, h.Tty)
	}
	if _, _, err := streamKeys(1000001, &procspace.MoveState{}); err == nil {
		t.Error("a pipe job whose pipes are unknown was accepted")
	}
	if got := externalKeys([]string{"socket:[12]", "pipe:[3]", "tty[8800:19]"}); !slices.Equal(got, []string{"unix[12]", "tty[8800:19]"}) {
		t.Errorf("external keys %v", got)
	}
}
