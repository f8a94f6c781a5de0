package netboot

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// RootInitCommand is the hidden subcommand (ssi __rootinit) that is the
// real init of the minimal cluster root `ssi vm up` makes when given no
// root of its own: it says so on the console and reaps orphans.
const RootInitCommand = "__rootinit"

// RootInitBanner is what RootInit prints first.
const RootInitBanner = "ssi: the cluster root's init runs"

// IsInit says whether this process is the kernel's /init of an initramfs
// (PID 1 run as /init): then main runs Init before anything else.
func IsInit() bool { return os.Getpid() == 1 && len(os.Args) > 0 && os.Args[0] == "/"+InitPath }

// RootInit is a minimal PID 1: a banner, then reaping for ever.
func RootInit() {
	host, _ := os.Hostname()
	fmt.Printf("%s on %s (PID %d); this root has no init of its own (ssi vm up without --root)\n", RootInitBanner, host, os.Getpid())
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(-1, &ws, 0, nil); errors.Is(err, unix.ECHILD) {
			time.Sleep(time.Second)
		}
	}
}
