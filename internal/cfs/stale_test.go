package cfs

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer/memnet"
)

// A cluster filesystem mount that no longer answers (its server is gone
// and its own daemon cannot answer either) is aborted and taken away; one
// that answers is left alone.
func TestReleaseStale(t *testing.T) {
	dir := mountDir(t)
	mnt := filepath.Join(dir, "stuck")
	var mounted atomic.Bool
	// No server at all; once mounted, accesses wait an hour for one.
	failure := func() time.Duration {
		if mounted.Load() {
			return time.Hour
		}
		return 100 * time.Millisecond
	}
	srv, err := NewServer(ServerConfig{Export: filepath.Join(dir, "export")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mn := memnet.New() // where node 9 is nowhere
	defer mn.Close()
	var gone atomic.Bool // the server moved to node 9
	target := func() (uint32, *Server) {
		if gone.Load() {
			return 9, nil
		}
		return 1, srv
	}
	cl, err := Mount(context.Background(), ClientConfig{Self: 2, Mount: mnt, Net: mn.Net(2), Target: target, Failure: failure})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	mounted.Store(true)
	gone.Store(true)
	cl.Drop()
	if !isOurMount(mnt) {
		t.Fatal("not mounted")
	}
	start := time.Now()
	if err := ReleaseStale(mnt, slog.Default()); err != nil {
		t.Fatalf("ReleaseStale: %v", err)
	}
	if isOurMount(mnt) {
		t.Fatal("the stuck mount is still there")
	}
	t.Logf("a stuck mount taken away in %v", time.Since(start).Round(time.Millisecond))

	// A mount that answers stays.
	p := mountPair(t)
	if err := ReleaseStale(p.a.c.Mount, slog.Default()); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if !isOurMount(p.a.c.Mount) || unix.Statfs(p.a.c.Mount, &st) != nil {
		t.Fatal("a live mount was taken away")
	}
}

// A node that starts while its server is down mounts once the server is
// there.
func TestMountWaitsForTheServer(t *testing.T) {
	dir := mountDir(t)
	srv, err := NewServer(ServerConfig{Export: filepath.Join(dir, "export")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mn := memnet.New()
	defer mn.Close()
	mnt := filepath.Join(dir, "mnt")
	f := New(Config{Self: 2, Server: 1, Mount: mnt, Net: mn.Net(2)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(3 * time.Second) // the first tries fail: node 1 serves nothing
	if isOurMount(mnt) {
		t.Fatal("mounted without a server")
	}
	var svc Service
	svc.Set(srv)
	mux := http.NewServeMux()
	mux.Handle(ssiv1connect.NewCfsHandler(&svc))
	mn.Serve(1, mux)
	deadline := time.Now().Add(20 * time.Second)
	for !isOurMount(mnt) {
		if time.Now().After(deadline) {
			t.Fatal("never mounted once the server was there")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatalf("the late mount: %v", err)
	}
}
