package procs

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// The test binary is also the jobs' init (InitPath defaults to
// /proc/self/exe), as the ssi binary is for the daemon.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == nsinit.Command {
		os.Exit(nsinit.Main(os.Args[2:]))
	}
	// A -race build of the init would sleep a second before it exits.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	os.Exit(m.Run())
}

// testCgroupParent is where this test binary's jobs' cgroups go: its own,
// as each daemon has (several test runs may share the machine, and job
// cgroups are named after CPIDs). Manager.Shutdown removes it.
func testCgroupParent() string { return "ssi-test-procs-" + strconv.Itoa(os.Getpid()) }
