// Package e2e holds the multi-process tests: they build the real ssi binary
// (with the race detector), start real daemons as separate processes, one
// per node on its own loopback address and data directory, and drive them
// through the real command line, as a user would.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

var ssiBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ssi-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ssiBin = filepath.Join(dir, "ssi")
	args := []string{"build", "-o", ssiBin}
	if os.Getenv("SSI_E2E_NORACE") == "" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../../cmd/ssi")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ssi:", err)
		os.Exit(1)
	}
	// The race runtime sleeps a second at every exit by default so that
	// other goroutines can still report; with a CLI and a job's init per
	// command that was most of this suite's time.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Cluster is a local cluster under test.
type Cluster struct {
	t      *testing.T
	Dir    string
	BaseIP string // node k listens on BaseIP+k-1
	N      int
}

// result of one CLI run.
type result struct {
	Stdout, Stderr string
	Code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// run runs the ssi binary (through argv0, to exercise symlink names).
func run(t *testing.T, env []string, stdin string, argv0 string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ssiBin, args...)
	cmd.Args[0] = argv0
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s %v: %v", argv0, args, err)
	}
	return result{out.String(), errb.String(), code}
}

// randomBase picks a loopback /24 no other test run is likely to use.
func randomBase() string {
	return fmt.Sprintf("127.%d.%d.1", 100+rand.IntN(150), 1+rand.IntN(250))
}

// StartCluster runs `ssi up --nodes n` in a fresh directory and stops the
// cluster when the test ends.
func StartCluster(t *testing.T, n int, extra ...string) *Cluster {
	t.Helper()
	return StartClusterEnv(t, n, nil, extra...)
}

// StartClusterEnv is StartCluster with env added to the environment of
// ssi up, which its daemons inherit.
func StartClusterEnv(t *testing.T, n int, env []string, extra ...string) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Dir: t.TempDir(), BaseIP: randomBase(), N: n}
	args := append([]string{"up", "--nodes", strconv.Itoa(n), "--dir", c.Dir, "--base-ip", c.BaseIP}, extra...)
	r := run(t, env, "", "ssi", args...)
	t.Cleanup(func() {
		run(t, nil, "", "ssi", "down", "--dir", c.Dir)
		if t.Failed() {
			c.dumpLogs()
		}
	})
	if r.Code != 0 {
		t.Fatalf("ssi up failed: %v", r)
	}
	return c
}

func (c *Cluster) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "node*", "ssi.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		c.t.Logf("==== %s\n%s", l, b)
	}
}

// Socket of node k.
func (c *Cluster) Socket(k int) string {
	return filepath.Join(c.Dir, fmt.Sprintf("node%d", k), "ssi.sock")
}

// IP of node k.
func (c *Cluster) IP(k int) string {
	parts := strings.Split(c.BaseIP, ".")
	last, _ := strconv.Atoi(parts[3])
	return fmt.Sprintf("%s.%s.%s.%d", parts[0], parts[1], parts[2], last+k-1)
}

// CLI runs an ssi command (argv0 may be an OpenSSI name) against node k.
func (c *Cluster) CLI(k int, argv0 string, args ...string) result {
	c.t.Helper()
	return run(c.t, []string{"SSI_SOCKET=" + c.Socket(k)}, "", argv0, args...)
}

// MustCLI is CLI that fails the test on a non-zero exit.
func (c *Cluster) MustCLI(k int, argv0 string, args ...string) string {
	c.t.Helper()
	r := c.CLI(k, argv0, args...)
	if r.Code != 0 {
		c.t.Fatalf("node %d: %s %v: %v", k, argv0, args, r)
	}
	return r.Stdout
}

// NodeJSON mirrors cluster -V --json.
type NodeJSON struct {
	Num    uint32 `json:"num"`
	Name   string `json:"name"`
	State  string `json:"state"`
	IPAddr string `json:"ipaddr"`
	HWAddr string `json:"hwaddr"`
	Role   string `json:"role"`
}

// Nodes returns node k's view of the table.
func (c *Cluster) Nodes(k int) (map[uint32]NodeJSON, string) {
	c.t.Helper()
	r := c.CLI(k, "cluster", "-V", "--json")
	if r.Code != 0 {
		return nil, r.String()
	}
	var ns []NodeJSON
	if err := json.Unmarshal([]byte(r.Stdout), &ns); err != nil {
		c.t.Fatalf("node %d: cluster -V --json: %v\n%s", k, err, r.Stdout)
	}
	out := map[uint32]NodeJSON{}
	for _, n := range ns {
		out[n.Num] = n
	}
	return out, r.Stdout
}

// Eventually polls cond until it returns "" or the timeout passes.
func Eventually(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitState waits until every node in viewers reports node num in state.
func (c *Cluster) WaitState(viewers []int, num uint32, want string, timeout time.Duration) {
	c.t.Helper()
	Eventually(c.t, timeout, func() string {
		for _, v := range viewers {
			ns, raw := c.Nodes(v)
			if ns == nil || ns[num].State != want {
				return fmt.Sprintf("node %d sees node %d as %q, want %s (%s)", v, num, ns[num].State, want, raw)
			}
		}
		return ""
	})
}

// PID of node k's daemon.
func (c *Cluster) PID(k int) int {
	b, err := os.ReadFile(filepath.Join(c.Dir, fmt.Sprintf("node%d", k), "ssi.pid"))
	if err != nil {
		c.t.Fatalf("node %d has no PID file: %v", k, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Kill sends SIGKILL to node k's daemon and waits for it to be gone.
func (c *Cluster) Kill(k int) {
	c.t.Helper()
	pid := c.PID(k)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		c.t.Fatalf("kill node %d (pid %d): %v", k, pid, err)
	}
	WaitGone(c.t, pid, 10*time.Second)
}

// WaitGone waits until pid no longer exists, or is a zombie whose every
// thread has ended: the main thread of a killed process can be a zombie
// while its other threads still exit, and its files (a listening socket)
// close only with the last one, which once made a restarted daemon fail to
// bind its port.
func WaitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, func() string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return ""
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil || len(tasks) <= 1 {
				return ""
			}
			if stuckOnFUSE(pid, tasks) {
				// Killed while one of its threads was in a request to its
				// own mount (go-fuse opens a file of it while mounting): it
				// cannot finish dying until the connection is aborted, which
				// the node's next daemon does before it binds its ports
				// (cfs.ReleaseStale).
				t.Logf("process %d is stuck closing a file of its own FUSE mount; its next daemon aborts the mount", pid)
				return ""
			}
			return fmt.Sprintf("process %d is exiting: threads still end", pid)
		}
		return fmt.Sprintf("process %d still runs", pid)
	})
}

// stuckOnFUSE says whether a thread of a dying process waits for a FUSE
// answer.
func stuckOnFUSE(pid int, tasks []os.DirEntry) bool {
	for _, task := range tasks {
		if w, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, task.Name())); err == nil && string(w) == "request_wait_answer" {
			return true
		}
	}
	return false
}

// StartDaemon starts node k's daemon as a separate process (after a kill,
// or for a node that joined by hand).
func (c *Cluster) StartDaemon(k int) *exec.Cmd {
	c.t.Helper()
	dir := filepath.Join(c.Dir, fmt.Sprintf("node%d", k))
	logf, err := os.OpenFile(filepath.Join(dir, "ssi.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(ssiBin, "daemon", "--data-dir", dir, "--socket", c.Socket(k), "--pid-file", filepath.Join(dir, "ssi.pid"),
		"--cfs-mount", devcluster.MountDir(c.Dir, k), "--cfs-export", devcluster.NodeExportDir(c.Dir, k))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start node %d: %v", k, err)
	}
	os.WriteFile(filepath.Join(dir, "ssi.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	go cmd.Wait() //nolint:errcheck
	return cmd
}

func others(n int, except ...int) []int {
	var out []int
	for k := 1; k <= n; k++ {
		skip := false
		for _, e := range except {
			skip = skip || e == k
		}
		if !skip {
			out = append(out, k)
		}
	}
	return out
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

// syncBuffer is a bytes.Buffer that a running command may write while the
// test reads it (for messages of a test that fails before the command ends).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
