package rexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// followRecheck is how often Follow looks at the file even without an
// inotify event (and how often it polls when inotify is unavailable).
const followRecheck = time.Second

// Follow copies the log at path to w from offset on, then keeps copying what
// is appended (`ssi logs -f`) until ctx is done. Before returning it copies
// whatever the file holds at that moment, so a caller that cancels ctx once
// the job has ended (after Wait returned) has all of it. It returns the
// offset up to which it copied, to resume from, and nil when ctx ended it.
// If the file shrinks below the offset (truncated), Follow starts over from
// its beginning.
func Follow(ctx context.Context, path string, offset int64, w io.Writer) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return offset, fmt.Errorf("following the log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return offset, fmt.Errorf("following the log %s from offset %d: %w", path, offset, err)
	}
	watch := newWatcher(path)
	defer watch.close()
	stop := context.AfterFunc(ctx, watch.wake)
	defer stop()

	off := offset
	for {
		n, err := io.Copy(w, f)
		off += n
		if err != nil {
			return off, fmt.Errorf("following the log %s: %w", path, err)
		}
		if ctx.Err() != nil {
			return off, nil
		}
		if st, err := f.Stat(); err == nil && st.Size() < off {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return off, fmt.Errorf("following the truncated log %s: %w", path, err)
			}
			off = 0
			continue
		}
		watch.wait(ctx)
	}
}

// watcher waits for a file to change, with inotify when it can.
type watcher struct {
	ino    *os.File      // inotify descriptor, nil when polling; set once
	broken bool          // inotify failed: poll (used by wait only)
	woken  chan struct{} // closed by wake
}

func newWatcher(path string) *watcher {
	w := &watcher{woken: make(chan struct{})}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return w
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY|unix.IN_ATTRIB|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return w
	}
	// Non-blocking, so the runtime poller serves it and a deadline can
	// interrupt a read.
	w.ino = os.NewFile(uintptr(fd), "inotify")
	return w
}

// wait returns after a change, after followRecheck, or once woken.
func (w *watcher) wait(ctx context.Context) {
	if w.ino == nil || w.broken {
		t := time.NewTimer(followRecheck)
		defer t.Stop()
		select {
		case <-t.C:
		case <-w.woken:
		}
		return
	}
	_ = w.ino.SetReadDeadline(time.Now().Add(followRecheck))
	if ctx.Err() != nil {
		return // wake may have run before the deadline above replaced its own
	}
	var buf [4096]byte
	_, err := w.ino.Read(buf[:])
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		w.broken = true // fall back to polling
	}
}

func (w *watcher) wake() {
	if w.ino != nil {
		_ = w.ino.SetReadDeadline(time.Now())
	}
	close(w.woken)
}

func (w *watcher) close() {
	if w.ino != nil {
		w.ino.Close()
	}
}
