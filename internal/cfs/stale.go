package cfs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
)

// staleAnswer is how long a mount left by an earlier daemon may take to
// answer before it counts as stuck.
const staleAnswer = 2 * time.Second

// ReleaseStale takes away a cluster filesystem mount at mount that an
// earlier daemon left and that no longer answers. A daemon killed while a
// thread of its own was in a request to its own mount (go-fuse opens and
// closes a file of the mount while mounting) cannot finish dying: the
// kernel waits for an answer only the dead daemon could give, the process
// keeps its sockets, and anything that touches the mount hangs. Aborting
// the FUSE connection (fusectl) ends both. A mount that answers belongs to
// a live daemon and is left alone. Call it before binding the daemon's
// ports.
func ReleaseStale(mount string, log *slog.Logger) error {
	if mount == "" {
		return nil
	}
	ms, err := mountinfo.Read()
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Point != mount || m.FSType != "fuse.cfs" {
			continue
		}
		done := make(chan error, 1)
		go func() {
			var st unix.Statfs_t
			done <- unix.Statfs(mount, &st)
		}()
		select {
		case err := <-done:
			if err == nil {
				return nil // live: Mount refuses to mount over it
			}
			// Dead (ENOTCONN): Mount takes it away.
			return nil
		case <-time.After(staleAnswer):
		}
		if err := abortFUSE(m.Dev); err != nil {
			return fmt.Errorf("the cluster filesystem mount at %s left by an earlier daemon does not answer, and aborting it failed (echo 1 > /sys/fs/fuse/connections/N/abort, N being its device's minor number %s, then umount -l %s): %w", mount, m.Dev, mount, err)
		}
		_ = unix.Unmount(mount, unix.MNT_DETACH)
		log.Warn("aborted a stuck cluster filesystem mount left by an earlier daemon", "mount", mount, "dev", m.Dev)
	}
	return nil
}

// abortFUSE aborts the FUSE connection of device dev ("0:N").
func abortFUSE(dev string) error {
	_, minor, ok := strings.Cut(dev, ":")
	if !ok {
		return fmt.Errorf("unexpected device %q", dev)
	}
	const conns = "/sys/fs/fuse/connections"
	if _, err := os.Stat(filepath.Join(conns, minor)); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("fusectl", conns, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount fusectl: %w", err)
		}
	}
	return os.WriteFile(filepath.Join(conns, minor, "abort"), []byte("1"), 0o200)
}
