package procspace

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// A job on a terminal (onnode -t, ssi run -t) has the slave side of a pty
// the daemon made, as its stdio and controlling terminal; the daemon holds
// the master. When the job moves, CRIU dumps the slave as an external
// terminal (`--external tty[RDEV:DEV]`: its master is not in the job) and
// restores it with a new pty's slave in its place (`--inherit-fd
// fd[N]:tty[RDEV:DEV]`), making it the controlling terminal of the job's
// session again with the same foreground process group (CRIU keeps the
// session and the groups in its images). What CRIU does not carry is the
// terminal itself: its settings (termios: a job in raw or cbreak mode stays
// so), its window size, what the job wrote and the daemon has not read, and
// what was typed and the job has not read. The old node takes those out of
// the frozen job's terminal (takeBackTTY), the migration's header carries
// them, and the new node puts them into the new one (NewTerminal, Arrive).

// Terminal is a pty the daemon holds for a job.
type Terminal struct {
	Master *os.File // the daemon's side
	Slave  *os.File // given to CRIU for the job's; nil once the job has its own
}

// NewTerminal makes the terminal of a job that moved here: a new pty, the
// user's as login(1) makes it (owned by uid, group tty, mode 0620) when
// the daemon runs as root, with the settings (EncodeTermios; empty: the
// kernel's defaults) and window size the old one had.
func NewTerminal(uid uint32, termios []byte, rows, cols uint16) (*Terminal, error) {
	master, slave, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("allocating a pseudo-terminal: %w", err)
	}
	t := &Terminal{Master: master, Slave: slave}
	fail := func(err error) (*Terminal, error) {
		master.Close()
		slave.Close()
		return nil, err
	}
	if os.Geteuid() == 0 && uid != 0 {
		g := -1 // no group tty: the group stays
		if tg, err := user.LookupGroup("tty"); err == nil {
			if n, err := strconv.Atoi(tg.Gid); err == nil {
				g = n
			}
		}
		if err := slave.Chown(int(uid), g); err != nil {
			return fail(fmt.Errorf("giving the terminal to uid %d: %w", uid, err))
		}
		if err := slave.Chmod(0o620); err != nil {
			return fail(fmt.Errorf("giving the terminal to uid %d: %w", uid, err))
		}
	}
	if len(termios) > 0 {
		tio, err := DecodeTermios(termios)
		if err != nil {
			return fail(err)
		}
		if err := unix.IoctlSetTermios(rawFD(slave), unix.TCSETS, tio); err != nil {
			return fail(fmt.Errorf("setting the terminal's settings: %w", err))
		}
	}
	if rows > 0 || cols > 0 {
		if err := unix.IoctlSetWinsize(rawFD(master), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
			return fail(fmt.Errorf("setting the terminal's size: %w", err))
		}
	}
	_ = unix.SetNonblock(rawFD(master), true)
	return t, nil
}

// Close closes both sides.
func (t *Terminal) Close() {
	t.Master.Close()
	if t.Slave != nil {
		t.Slave.Close()
	}
}

// EncodeTermios is a terminal's settings as the migration's header carries
// them (both ends run the same build on the same architecture).
func EncodeTermios(t *unix.Termios) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, t)
	return b.Bytes()
}

// DecodeTermios reads what EncodeTermios wrote.
func DecodeTermios(b []byte) (*unix.Termios, error) {
	var t unix.Termios
	if len(b) != binary.Size(t) {
		return nil, fmt.Errorf("terminal settings of %d bytes, want %d", len(b), binary.Size(t))
	}
	if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, &t); err != nil {
		return nil, fmt.Errorf("reading the terminal's settings: %w", err)
	}
	return &t, nil
}

// TTYKey is how CRIU names a terminal in --external and --inherit-fd:
// tty[RDEV:DEV], st_rdev and st_dev of the slave in hexadecimal.
func TTYKey(slave *os.File) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(rawFD(slave), &st); err != nil {
		return "", fmt.Errorf("stat of the terminal: %w", err)
	}
	return fmt.Sprintf("tty[%x:%x]", st.Rdev, st.Dev), nil
}

// openSlave opens the slave of master (TIOCGPTPEER), not as a controlling
// terminal, non-blocking.
func openSlave(master *os.File) (*os.File, error) {
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(rawFD(master)), unix.TIOCGPTPEER,
		uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC))
	if errno != 0 {
		return nil, fmt.Errorf("opening the terminal's slave: %w", errno)
	}
	return os.NewFile(fd, "pty-slave"), nil
}

// takeBackTTY, for a frozen terminal job: sends what it wrote and the
// daemon has not read yet, and records in st the terminal's CRIU key,
// settings and size, and what was typed and the job has not read (taken
// out of the terminal: Resume or the new node gives it back).
func (m *movable) takeBackTTY(st *MoveState) error {
	fd := rawFD(m.tty)
	// A read of a pty master that finds nothing first waits for the
	// kernel's pending transfer from the slave (n_tty): with the job
	// frozen, reading until EAGAIN takes all it wrote.
	buf := make([]byte, chunkSize)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 || err != nil {
			break // EAGAIN: all read; EIO: the job closed its terminal
		}
		m.send(0, buf[:n])
	}
	slave, err := openSlave(m.tty)
	if err != nil {
		return err
	}
	defer slave.Close()
	if st.TTYKey, err = TTYKey(slave); err != nil {
		return err
	}
	tio, err := unix.IoctlGetTermios(rawFD(slave), unix.TCGETS)
	if err != nil {
		return fmt.Errorf("reading the terminal's settings: %w", err)
	}
	ws, err := unix.IoctlGetWinsize(rawFD(slave), unix.TIOCGWINSZ)
	if err != nil {
		return fmt.Errorf("reading the terminal's size: %w", err)
	}
	st.Termios, st.Rows, st.Cols = EncodeTermios(tio), ws.Row, ws.Col
	st.StdinPending, err = takeInput(slave, tio)
	return err
}

// takeInput reads what was typed on a terminal and not read yet, a line
// not finished included: the terminal is switched out of canonical mode
// for the read (which makes a partial line readable) and back to tio.
func takeInput(slave *os.File, tio *unix.Termios) ([]byte, error) {
	fd := rawFD(slave)
	raw := *tio
	raw.Lflag &^= unix.ICANON
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 0, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("taking back the unread input: %w", err)
	}
	var pending []byte
	buf := make([]byte, 4096)
	var rerr error
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n > 0 {
			pending = append(pending, buf[:n]...)
			continue
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			rerr = fmt.Errorf("taking back the unread input: %w", err)
		}
		break
	}
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
		return pending, errors.Join(rerr, fmt.Errorf("restoring the terminal's settings: %w", err))
	}
	return pending, rerr
}

// giveInputWait bounds how long giveInput waits for the kernel to take
// the input in.
const giveInputWait = 2 * time.Second

// giveInput types pending into a terminal as input that was already
// processed once: not echoed again, no signal or translation of it, and
// readable as it is (a line the job had not finished is readable at once
// as if finished: the kernel offers no way to put back a partial line).
// slave nil: it is opened from master for this.
func giveInput(master, slave *os.File, pending []byte) error {
	if len(pending) == 0 {
		return nil
	}
	if slave == nil {
		var err error
		if slave, err = openSlave(master); err != nil {
			return err
		}
		defer slave.Close()
	}
	fd := rawFD(slave)
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("reading the terminal's settings: %w", err)
	}
	quiet := *tio
	quiet.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	quiet.Iflag &^= unix.ICRNL | unix.INLCR | unix.IGNCR | unix.IUCLC | unix.ISTRIP | unix.IXON
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return fmt.Errorf("setting the terminal's settings: %w", err)
	}
	werr := writeTTY(master, pending)
	// The kernel hands what is written to a master to the slave's line
	// discipline asynchronously: it must have all of it before the
	// settings change back. There is no event for that: poll its count.
	deadline := time.Now().Add(giveInputWait)
	for werr == nil {
		n, err := unix.IoctlGetInt(fd, unix.TIOCINQ)
		if err != nil || n >= len(pending) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
		return errors.Join(werr, fmt.Errorf("restoring the terminal's settings: %w", err))
	}
	return werr
}

// writeTTY writes b into a (non-blocking) pty master.
func writeTTY(master *os.File, b []byte) error {
	fd := rawFD(master)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if err := waitFD(fd, unix.POLLOUT, -1); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		}
		b = b[n:]
	}
	return nil
}

// ttyEOF is the terminal's EOF character (^D unless the job changed it):
// what a terminal job gets for its client's stdin EOF.
func ttyEOF(master *os.File) []byte {
	if tio, err := unix.IoctlGetTermios(rawFD(master), unix.TCGETS); err == nil && tio.Cc[unix.VEOF] != 0 {
		return []byte{tio.Cc[unix.VEOF]}
	}
	return []byte{4}
}
