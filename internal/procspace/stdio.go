package procspace

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// passedStdio is a CLI's stdin, stdout and stderr, passed over the control
// socket (ExecSpec.stdio_passed). The daemon uses them for one request
// only and closes them when it ends.
//
// They share their open file descriptions with the CLI and whatever else
// the user's shell gave them to: the daemon never changes their flags (no
// O_NONBLOCK), so every wait is a poll(2) that also watches stop, and every
// read or write happens only once poll said it would not block.
type passedStdio struct {
	in, out, err *os.File
	stop         *stopper // the request is over or the client is gone
}

// takeStdio makes passedStdio of the descriptors a CLI passed; it closes
// them and fails unless there are exactly three.
func takeStdio(fds []*os.File) (*passedStdio, error) {
	if len(fds) != 3 {
		for _, f := range fds {
			f.Close()
		}
		return nil, fmt.Errorf("the CLI said it passed its stdin, stdout and stderr, but %d descriptors arrived", len(fds))
	}
	st, err := newStopper()
	if err != nil {
		for _, f := range fds {
			f.Close()
		}
		return nil, err
	}
	return &passedStdio{in: fds[0], out: fds[1], err: fds[2], stop: st}, nil
}

// close closes the descriptors; every pump that used them must have
// returned (a descriptor number closed under a pump could be reused).
func (p *passedStdio) close() {
	p.in.Close()
	p.out.Close()
	p.err.Close()
	p.stop.close()
}

// stopper wakes every poll that watches it, for good.
type stopper struct {
	fd   int
	once sync.Once
}

func newStopper() (*stopper, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &stopper{fd: fd}, nil
}

func (s *stopper) stop() {
	s.once.Do(func() { _, _ = unix.Write(s.fd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) })
}

func (s *stopper) close() { _ = unix.Close(s.fd) }

var errStopped = errors.New("stopped")

// rawFD is f's descriptor, without putting f in blocking mode as Fd does.
func rawFD(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// waitFD waits until fd is ready for ev (or has hung up or failed: the
// next call on it says which), or stop fired (errStopped). stop < 0: wait
// for fd alone.
func waitFD(fd int, ev int16, stop int) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: ev}, {Fd: int32(stop), Events: unix.POLLIN}}
	if stop < 0 {
		pfd = pfd[:1]
	}
	for {
		_, err := unix.Poll(pfd, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if len(pfd) > 1 && pfd[1].Revents != 0 {
			return errStopped
		}
		if pfd[0].Revents != 0 {
			return nil
		}
	}
}

// readFD reads from fd once it is readable; 0, nil is EOF.
func readFD(fd int, b []byte, stop int) (int, error) {
	for {
		if err := waitFD(fd, unix.POLLIN, stop); err != nil {
			return 0, err
		}
		n, err := unix.Read(fd, b)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// writeFD writes all of b to fd, waiting for room as it goes.
func writeFD(fd int, b []byte, stop int) error {
	for len(b) > 0 {
		if err := waitFD(fd, unix.POLLOUT, stop); err != nil {
			return err
		}
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// fdWriter writes into a descriptor it must never block on for good: a
// write(2) of more than a page into a blocking pipe waits until all of it
// went in, which no poll can interrupt, so a pipe is written through a
// non-blocking pipe of our own and spliced on (SPLICE_F_NONBLOCK, after
// poll said there is room). Other descriptors (files, terminals) are
// written directly once poll says they take data.
type fdWriter struct {
	dst    int
	r, w   int // the staging pipe; -1 when dst is no pipe
	staged int
}

func newFDWriter(dst int) (*fdWriter, error) {
	fw := &fdWriter{dst: dst, r: -1, w: -1}
	var st unix.Stat_t
	if err := unix.Fstat(dst, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return fw, nil
	}
	p := make([]int, 2)
	if err := unix.Pipe2(p, unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("create a pipe: %w", err)
	}
	_, _ = unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, pipeSize)
	fw.r, fw.w = p[0], p[1]
	return fw, nil
}

func (fw *fdWriter) close() {
	if fw.r >= 0 {
		_ = unix.Close(fw.r)
		_ = unix.Close(fw.w)
	}
}

// write writes all of b (it is in dst when write returns), or fails: a
// write error, or errStopped.
func (fw *fdWriter) write(b []byte, stop int) error {
	if fw.r < 0 {
		return writeFD(fw.dst, b, stop)
	}
	for len(b) > 0 {
		n, err := unix.Write(fw.w, b)
		if n > 0 {
			b, fw.staged = b[n:], fw.staged+n
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return err
		}
		for fw.staged > 0 {
			if err := waitFD(fw.dst, unix.POLLOUT, stop); err != nil {
				return err
			}
			m, err := unix.Splice(fw.r, nil, fw.dst, nil, fw.staged, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if m > 0 {
				fw.staged -= int(m)
			}
			if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				return err
			}
		}
	}
	return nil
}

// spliceMax is the most one splice call moves (a full grown pipe).
const spliceMax = pipeSize

// copyFD copies src to dst until EOF on src (nil, nil), a failure reading
// src (rerr) or writing dst (werr), or stop (rerr errStopped). Where one
// end is a pipe it splices, so the data never enters this process; for
// ends that cannot splice (a terminal, say) it copies through buf. The
// amount in flight is what the pipes hold: never more than one buf.
func copyFD(dst, src, stop int, buf []byte) (rerr, werr error) {
	return copyFDUntil(dst, src, stop, stop, buf)
}

// copyFDUntil is copyFD with two stops: soft ends the copy only once src
// holds nothing (a frozen job's output pipe is then empty: all of it went
// to dst), hard at once.
func copyFDUntil(dst, src, soft, hard int, buf []byte) (rerr, werr error) {
	stop := hard
	canSplice := true
	var fw *fdWriter // for the buffer copy
	defer func() {
		if fw != nil {
			fw.close()
		}
	}()
	for {
		if err := waitFD(src, unix.POLLIN, soft); err != nil {
			if !errors.Is(err, errStopped) || soft == hard || inq(src) == 0 {
				return err, nil
			}
		}
		if canSplice {
			if err := waitFD(dst, unix.POLLOUT, stop); err != nil {
				return errStopped, nil
			}
			n, err := unix.Splice(src, nil, dst, nil, spliceMax, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case n > 0:
				continue
			case err == nil:
				return nil, nil // EOF
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP):
				canSplice = false // neither end is a pipe, or one cannot splice
			case errors.Is(err, unix.EPIPE):
				return nil, err
			default:
				return err, nil
			}
		}
		n, err := readFD(src, buf, stop)
		if err != nil {
			return err, nil
		}
		if n == 0 {
			return nil, nil
		}
		if fw == nil {
			if fw, err = newFDWriter(dst); err != nil {
				return nil, err
			}
		}
		if err := fw.write(buf[:n], stop); err != nil {
			if errors.Is(err, errStopped) {
				return err, nil
			}
			return nil, err
		}
	}
}

// inq is how many bytes src (a pipe) holds unread; 0 when unknown.
func inq(src int) int {
	n, err := unix.IoctlGetInt(src, unix.TIOCINQ) // FIONREAD
	if err != nil {
		return 0
	}
	return n
}

// drain reads src to the end and drops it: a job whose output nobody takes
// any more must not block on a full pipe.
func drain(src int, buf []byte) {
	for {
		n, err := readFD(src, buf, -1)
		if err != nil || n == 0 {
			return
		}
	}
}
