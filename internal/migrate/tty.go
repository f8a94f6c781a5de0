package migrate

import (
	"fmt"
	"os"
	"strings"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procspace"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// An attached job's stdio at the dump: its three pipes, which CRIU dumps
// and the restore replaces (--inherit-fd), or its terminal, whose master
// the daemon holds: CRIU must be told at the dump that the slave is
// external (--external tty[RDEV:DEV]), and the restore gives it a new
// pty's slave in its place (procspace/ttymove.go says what else moves).

// streamKeys are, for an attached job's stream stopped for a move, the
// CRIU names of its stdio pipes (for the header) and what the dump must
// take as external (its terminal).
func streamKeys(cpid vproc.CPID, ms *procspace.MoveState) (pipes, external []string, err error) {
	if ms.TTYKey != "" {
		return nil, []string{ms.TTYKey}, nil
	}
	for _, k := range ms.Keys {
		if k == "" {
			return nil, nil, fmt.Errorf("process %d: its stdio pipes are unknown", cpid)
		}
		pipes = append(pipes, k)
	}
	return pipes, nil, nil
}

// streamHeader puts into the migration's header where an attached job's
// stream stopped, and its terminal.
func streamHeader(hdr *ssiv1.MigrateHeader, ms *procspace.MoveState, stdioKeys []string) {
	hdr.Attached, hdr.StdioKeys = true, stdioKeys
	hdr.StdinPending, hdr.StdinClosed, hdr.OutSeq = ms.StdinPending, ms.StdinClosed, ms.OutSeq
	hdr.StdinAcked, hdr.CtlAcked = ms.StdinAcked, ms.CtlAcked
	if ms.TTYKey != "" {
		hdr.Tty, hdr.TtyKey, hdr.Termios = true, ms.TTYKey, ms.Termios
		hdr.Rows, hdr.Cols = uint32(ms.Rows), uint32(ms.Cols)
	}
}

// externalKeys turns the keys of files whose other end is outside the job
// into CRIU's --external arguments: unix sockets ("socket:[INODE]" ->
// "unix[INODE]") and terminals (as they are).
func externalKeys(keys []string) []string {
	var ext []string
	for _, key := range keys {
		if ino, ok := strings.CutPrefix(key, "socket:["); ok {
			ext = append(ext, "unix["+strings.TrimSuffix(ino, "]")+"]")
		} else if strings.HasPrefix(key, "tty[") {
			ext = append(ext, key)
		}
	}
	return ext
}

// jobTerminal makes the new terminal of a terminal job restored here, its
// slave given to CRIU (in inherit) for the old one's.
func jobTerminal(h *ssiv1.MigrateHeader, inherit map[string]*os.File) (*procspace.Terminal, error) {
	if !strings.HasPrefix(h.TtyKey, "tty[") || h.Rows > 0xffff || h.Cols > 0xffff {
		return nil, fmt.Errorf("a terminal job with a bad terminal (%q, %dx%d)", h.TtyKey, h.Cols, h.Rows)
	}
	if _, dup := inherit[h.TtyKey]; dup {
		return nil, fmt.Errorf("the job's terminal %s twice", h.TtyKey)
	}
	t, err := procspace.NewTerminal(h.Uid, h.Termios, uint16(h.Rows), uint16(h.Cols))
	if err != nil {
		return nil, err
	}
	// The restore closes what it inherits once the job has its own.
	inherit[h.TtyKey], t.Slave = t.Slave, nil
	return t, nil
}

// arrivalOf is where the stream of an attached job restored here goes on
// from (what streamHeader put in h), with its new stdio.
func arrivalOf(h *ssiv1.MigrateHeader, pipes [3]*os.File, term *procspace.Terminal) procspace.Arrival {
	a := procspace.Arrival{Pipes: pipes, TTY: term, OutSeq: h.OutSeq, StdinAcked: h.StdinAcked, CtlAcked: h.CtlAcked, StdinClosed: h.StdinClosed}
	if term != nil {
		a.StdinPending = h.StdinPending // pipes had theirs before the restore
	}
	return a
}
