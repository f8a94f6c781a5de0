package procs

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Movable refuses what cannot migrate, each with its reason (whether an
// attached job's stream can follow is procspace's to say), and MoveOut
// ends the copy without recording its death as the job's end.
func TestMovable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (jobs with a PID namespace and a cgroup): run the tests as root")
	}
	m, err := NewManager(Options{Node: 6, DataDir: t.TempDir(), PoolSize: -1, CgroupParent: testCgroupParent()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Shutdown)
	ctx := context.Background()
	root, other := Caller{}, Caller{UID: 4242, GID: 4242}
	env := []string{"PATH=/usr/bin:/bin", "GORACE=atexit_sleep_ms=0"}
	start := func(detach, pin bool) *Job {
		t.Helper()
		j, err := m.Start(ctx, StartRequest{Argv: []string{"sleep", "30"}, Env: env, Dir: "/", Caller: root, Detach: detach, Pin: pin})
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	det, att, pinned := start(true, false), start(false, false), start(true, true)
	for _, tc := range []struct {
		j      *Job
		c      Caller
		is     error
		reason string
	}{
		{pinned, root, ErrNotMovable, "pinned"},
		{det, other, ErrNotOwner, "belongs to uid 0"},
	} {
		if _, err := m.Movable(tc.j.CPID, tc.c); !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("Movable(%d) as uid %d: %v; want %v (%s)", tc.j.CPID, tc.c.UID, err, tc.is, tc.reason)
		}
	}
	if _, err := m.Movable(det.CPID+1000, root); !errors.Is(err, ErrNoSuchProcess) {
		t.Errorf("Movable of an unknown CPID: %v", err)
	}
	j, err := m.Movable(det.CPID, root)
	if err != nil || j != det {
		t.Fatalf("Movable(%d): %v", det.CPID, err)
	}
	// A waiter learns that the process moved, not that it was killed.
	waited := make(chan error, 1)
	go func() { _, err := m.Wait(ctx, det.CPID, root); waited <- err }()
	time.Sleep(50 * time.Millisecond) // let Wait find the job (it fails with ErrNoSuchProcess otherwise, also correct)
	if err := m.MoveOut(det); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		if !errors.Is(err, ErrMoved) && !errors.Is(err, ErrNoSuchProcess) {
			t.Errorf("Wait across MoveOut: %v; want ErrMoved", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after MoveOut")
	}
	<-det.Done()
	if _, err := m.Wait(ctx, det.CPID, root); !errors.Is(err, ErrNoSuchProcess) {
		t.Errorf("Wait after MoveOut: %v; want no such process (the copy here is forgotten)", err)
	}
	if _, err := os.Stat(det.LogPath); !os.IsNotExist(err) {
		t.Errorf("the log of the moved copy is still here: %v", err)
	}
	for _, x := range []*Job{att, pinned} {
		_ = x.Process().Discard()
	}
}

// While a job is being moved, AwaitMove holds a signal back until the move
// settles: a failed move lets it reach the job here; a committed one makes
// this node say the job is elsewhere (the caller asks the node it runs on).
// A second move of the same job is refused while one is under way.
func TestMovingHoldsSignalsBack(t *testing.T) {
	m := newManager(t)
	me := Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	ctx := context.Background()
	j, err := m.Start(ctx, StartRequest{Argv: []string{"sleep", "100"}, Env: []string{"PATH=/usr/bin:/bin"}, Caller: me, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	m.AwaitMove(ctx, j.CPID) // no move: at once

	settle, err := m.Moving(j)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Moving(j); !errors.Is(err, ErrNotMovable) {
		t.Errorf("a second move while one is under way: %v, want ErrNotMovable", err)
	}
	released := make(chan struct{})
	go func() { m.AwaitMove(ctx, j.CPID); close(released) }()
	select {
	case <-released:
		t.Fatal("AwaitMove returned while the move is under way")
	case <-time.After(50 * time.Millisecond):
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	m.AwaitMove(short, j.CPID) // a caller that gives up is let go
	settle(false)
	<-released
	if err := m.Signal(j.CPID, syscall.SIGCONT, me); err != nil {
		t.Errorf("signal after a failed move: %v", err)
	}

	settle, err = m.Moving(j)
	if err != nil {
		t.Fatalf("a new move after a failed one: %v", err)
	}
	settle(true)
	settle(false) // once settled, it stays so
	if err := m.Signal(j.CPID, syscall.SIGTERM, me); !errors.Is(err, ErrNoSuchProcess) {
		t.Errorf("signal after the move committed: %v, want ErrNoSuchProcess (it runs elsewhere)", err)
	}
	if _, err := m.Moving(j); !errors.Is(err, ErrNotMovable) {
		t.Errorf("moving a job that moved away: %v", err)
	}
	_ = j.Process().Signal(syscall.SIGKILL) // a plain job (no cgroup to discard)
	<-j.Done()
}
