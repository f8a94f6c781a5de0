package procs

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/vproc"
)

func TestFilterEnv(t *testing.T) {
	in := []string{"HOME=/root", "LD_PRELOAD=/evil.so", "LD_LIBRARY_PATH=/x", "SSH_AUTH_SOCK=/tmp/a", "DISPLAY=:0",
		"TERM=xterm", "SSI_SOCKET=/s", "PATH=/bin", "LANG=C", "=junk", "XDG_RUNTIME_DIR=/run/user/0"}
	want := []string{"HOME=/root", "TERM=xterm", "PATH=/bin", "LANG=C"}
	if got := FilterEnv(in); !reflect.DeepEqual(got, want) {
		t.Errorf("FilterEnv = %v, want %v", got, want)
	}
}

func newManager(t *testing.T) *Manager {
	t.Helper()
	m, err := NewManager(Options{Node: 4, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m.root = false // plain jobs: this test binary cannot act as the job init
	return m
}

func TestJobLifecycle(t *testing.T) {
	m := newManager(t)
	me := Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	ctx := context.Background()
	j, err := m.Start(ctx, StartRequest{Argv: []string{"sh", "-c", "echo hi; exit 3"}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/", Caller: me})
	if err != nil {
		t.Fatal(err)
	}
	if j.CPID.Node() != 4 || !j.CPID.Valid() {
		t.Errorf("CPID %d does not name node 4", j.CPID)
	}
	out, _ := io.ReadAll(j.Process().Stdout())
	io.ReadAll(j.Process().Stderr())
	<-j.Done()
	st, _ := j.Status()
	if string(out) != "hi\n" || st.ExitCode() != 3 {
		t.Errorf("output %q exit %d", out, st.ExitCode())
	}
	if len(m.List(Filter{})) != 1 {
		t.Errorf("an attached job that ended is listed until Finish")
	}
	m.Finish(j)
	if len(m.List(Filter{})) != 0 {
		t.Errorf("finished job still listed")
	}
	if _, err := m.Start(ctx, StartRequest{Argv: []string{"no-such-command-xyz"}, Env: []string{"PATH=/usr/bin:/bin"}, Caller: me}); err == nil {
		t.Errorf("a missing command started")
	}
}

func TestDetachedJobSignalWaitAndOwners(t *testing.T) {
	m := newManager(t)
	me := Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	other := Caller{UID: me.UID + 1000}
	ctx := context.Background()
	j, err := m.Start(ctx, StartRequest{Argv: []string{"sh", "-c", "echo logged; sleep 100"}, Env: []string{"PATH=/usr/bin:/bin"}, Caller: me, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	rows := m.List(Filter{CPID: j.CPID})
	if len(rows) == 0 || rows[0].CPID != j.CPID || rows[0].Node != 4 || !strings.Contains(rows[0].Cmd, "sleep 100") {
		t.Fatalf("List: %+v", rows)
	}
	uid := other.UID
	if len(m.List(Filter{UID: &uid})) != 0 {
		t.Errorf("another user's filter lists my job")
	}
	if me.UID != 0 {
		if err := m.Signal(j.CPID, syscall.SIGTERM, other); !errors.Is(err, ErrNotOwner) {
			t.Errorf("signal by another user: %v", err)
		}
	}
	if err := m.Signal(j.CPID+1, syscall.SIGTERM, me); !errors.Is(err, ErrNoSuchProcess) {
		t.Errorf("signal of an unknown CPID: %v", err)
	}
	path, _, err := m.Logs(j.CPID, me)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if string(b) == "logged\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log holds %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := m.Signal(j.CPID, syscall.SIGTERM, me); err != nil {
		t.Fatal(err)
	}
	st, err := m.Wait(ctx, j.CPID, me)
	if err != nil || st.ExitCode() != 143 {
		t.Errorf("wait: %d %v", st.ExitCode(), err)
	}
	if _, err := m.Wait(ctx, j.CPID, me); !errors.Is(err, ErrNoSuchProcess) {
		t.Errorf("a waited job can be waited again: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the log of a waited job is kept")
	}
}

func TestSequenceSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	m, err := NewManager(Options{Node: 2, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := m.next()
	m2, err := NewManager(Options{Node: 2, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := m2.next()
	if again <= first {
		t.Errorf("after a restart the node issued %d again after %d", again, first)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cpid-seq"))
	if _, seq := vproc.Split(again); strings.TrimSpace(string(b)) == "" || seq == 0 {
		t.Errorf("sequence file %q", b)
	}
}

func TestDirInRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "home", "u"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, want string }{
		{"", "/"},
		{root, "/"},
		{root + "/home/u", "/home/u"},
		{root + "/../x", "/"}, // not below the root, and no /x in it
		{"/home/u", "/home/u"},
		{"/not/in/the/root", "/"},
	} {
		if got := DirInRoot(root, c.dir); got != c.want {
			t.Errorf("DirInRoot(%q) = %q, want %q", c.dir, got, c.want)
		}
	}
}
