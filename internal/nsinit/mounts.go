package nsinit

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
)

// dropFUSE detaches the FUSE mounts a new mount namespace inherited from
// the host: their daemons are other processes, whose unmount would
// otherwise wait (and a FUSE daemon's exit hang) until this namespace
// ends. A mount that holds the init's working directory or executable
// stays.
func dropFUSE() {
	ms, err := mountinfo.Read()
	if err != nil {
		return
	}
	cwd, _ := os.Getwd()
	exe, _ := os.Executable()
	below := func(p, dir string) bool {
		return p != "" && (p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/"))
	}
	for i := len(ms) - 1; i >= 0; i-- { // the deepest first
		m := ms[i]
		if m.FSType != "fuse" && m.FSType != "fuseblk" && !strings.HasPrefix(m.FSType, "fuse.") {
			continue
		}
		if below(cwd, m.Point) || below(exe, m.Point) {
			continue
		}
		_ = unix.Unmount(m.Point, unix.MNT_DETACH)
	}
}
