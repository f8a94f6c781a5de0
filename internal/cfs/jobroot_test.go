package cfs

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestJobRootBinds: the node's /proc, /dev, /sys and /run are bound over
// its own mount only (not over the export, not over another node's
// mount), come back when the kernel takes them away (a cache flush
// invalidates their directories), and are gone after stop.
func TestJobRootBinds(t *testing.T) {
	p := mountPair(t)
	f := New(Config{Self: 2, Mount: p.a.c.Mount, JobRoot: true})
	if _, err := f.JobRoot(); !errors.Is(err, ErrNoJobRoot) {
		t.Fatalf("JobRoot before the binds: %v, want ErrNoJobRoot", err)
	}
	stop := f.runJobRoot(t.Context(), slog.Default())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	ready := func() bool {
		root, err := f.JobRoot()
		return err == nil && root == p.a.c.Mount && mountPoints()[filepath.Join(p.a.c.Mount, "proc")]
	}
	waitFor(t, "the binds", ready)
	if _, err := os.Stat(p.at(p.a, "proc/self/status")); err != nil {
		t.Errorf("the node's /proc in the cluster root: %v", err)
	}
	if _, err := os.Stat(p.at(p.a, "dev/null")); err != nil {
		t.Errorf("the node's /dev in the cluster root: %v", err)
	}
	for _, dir := range []string{filepath.Join(p.export, "proc"), p.at(p.b, "proc")} {
		ents, err := os.ReadDir(dir)
		if err != nil || len(ents) != 0 {
			t.Errorf("%s: %d entries, %v; want an empty directory (binds are on node a's mount only)", dir, len(ents), err)
		}
	}

	// The kernel detaches what is mounted on a directory whose entry is
	// invalidated: the binds come back.
	p.a.flushAll()
	time.Sleep(50 * time.Millisecond)
	waitFor(t, "the binds again after a flush", ready)

	stop()
	stopped = true
	have := mountPoints()
	for _, d := range NodeLocal {
		if have[filepath.Join(p.a.c.Mount, d)] {
			t.Errorf("%s is still bound after stop", d)
		}
	}
	if _, err := f.JobRoot(); !errors.Is(err, ErrNoJobRoot) {
		t.Errorf("JobRoot after stop: %v, want ErrNoJobRoot", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
