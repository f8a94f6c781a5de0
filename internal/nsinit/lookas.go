package nsinit

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// LookPathAs is LookPath with the file-system permissions of c instead of
// the caller's: a root daemon resolving a user's command finds what that
// user could run, and reports a path the user may not look into as not
// executable ("permission denied", 126), as the user's own shell would —
// not which of root's files exist. Without c, for root, or when this
// process is not root, it is LookPath.
func LookPathAs(file, pathEnv, dir string, c *Credential) (string, error) {
	if c == nil || c.UID == 0 || os.Geteuid() != 0 {
		return LookPath(file, pathEnv, dir)
	}
	var p string
	var err error
	if aerr := asUser(*c, func() { p, err = lookPathChecked(file, pathEnv, dir) }); aerr != nil {
		return "", aerr
	}
	return p, err
}

// lookPathChecked is LookPath, then a check that the current thread's
// file-system identity may execute the result (mode bits for its owner
// and groups, and ACLs: faccessat2 with AT_EACCESS uses the fsuid).
func lookPathChecked(file, pathEnv, dir string) (string, error) {
	p, err := LookPath(file, pathEnv, dir)
	if err != nil {
		return "", err
	}
	if err := unix.Faccessat2(unix.AT_FDCWD, p, unix.X_OK, unix.AT_EACCESS); err != nil && !errors.Is(err, unix.ENOSYS) {
		return "", fmt.Errorf("%w: %s: permission denied", ErrNotExecutable, p)
	}
	return p, nil
}

// asUser runs f on an OS thread of its own whose file-system identity
// (fsuid, fsgid, supplementary groups) is c's; the thread ends with it,
// so no other goroutine ever runs with those credentials. The process's
// other threads keep root's: setfsuid and the raw setgroups of x/sys/unix
// act on the calling thread only. A root fsuid changed to another drops
// the file-system capabilities (CAP_DAC_OVERRIDE, ...) of that thread.
func asUser(c Credential, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the runtime ends a thread still locked when
		// its goroutine returns.
		groups := make([]int, len(c.Groups))
		for i, g := range c.Groups {
			groups[i] = int(g)
		}
		if err := unix.Setgroups(groups); err != nil {
			errc <- fmt.Errorf("take the caller's groups to look up the command: %w", err)
			return
		}
		if err := unix.Setfsgid(int(c.GID)); err != nil {
			errc <- fmt.Errorf("take the caller's group to look up the command: %w", err)
			return
		}
		if err := unix.Setfsuid(int(c.UID)); err != nil {
			errc <- fmt.Errorf("take the caller's identity to look up the command: %w", err)
			return
		}
		// setfsuid reports no failure: read it back (a call with an
		// invalid ID changes nothing and returns the current one).
		if cur, _ := unix.SetfsuidRetUid(-1); cur != int(c.UID) {
			errc <- fmt.Errorf("take the caller's identity to look up the command: fsuid is %d, not %d", cur, c.UID)
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}
