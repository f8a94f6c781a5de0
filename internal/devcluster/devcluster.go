// Package devcluster owns the local demo cluster (`ssi up` / `ssi down`):
// N real ssi daemons on this one machine, as OpenSSI's UML/Xen demos ran
// several nodes on one host. Node k listens on its own loopback address,
// keeps its data in DIR/nodek (socket DIR/nodek/ssi.sock, PID file
// DIR/nodek/ssi.pid, log DIR/nodek/ssi.log). It drives the daemons only
// through their public commands and sockets, like a user would.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/mountinfo"
	"github.com/ssi-cluster/ssi/internal/node"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Options describe a local cluster.
type Options struct {
	Dir         string
	Nodes       int
	ClusterName string
	BaseIP      netip.Addr // node 1's address; node k gets BaseIP+k-1
	BaseMAC     string     // node 1's MAC; node k gets BaseMAC+k-1
	Config      state.Config
	Raft        node.RaftTiming
	Binary      string        // the ssi binary to run (default: this executable)
	Timeout     time.Duration // how long to wait for every node to be UP (default scales with Nodes)
	Isolate     bool          // each node in its own UTS, PID, mount and network namespace
	JobRoot     bool          // jobs get the cluster root as their / (the daemons' --cfs-job-root)
	Progress    io.Writer
}

// Defaults of the demo cluster.
var (
	DefaultBaseIP  = netip.MustParseAddr("127.0.0.2")
	DefaultBaseMAC = "0a:00:00:00:11:d1" // the seed how-to's D1, D2, ... convention
)

// NodeDir is node k's data directory.
func NodeDir(dir string, k int) string { return filepath.Join(dir, "node"+strconv.Itoa(k)) }

// Socket is node k's control socket.
func Socket(dir string, k int) string { return filepath.Join(NodeDir(dir, k), "ssi.sock") }

// MountDir is where node k mounts the cluster filesystem.
func MountDir(dir string, k int) string { return filepath.Join(dir, "mnt", "node"+strconv.Itoa(k)) }

// ExportDir is the directory node 1 exports as the cluster filesystem.
func ExportDir(dir string) string { return filepath.Join(dir, "root") }

// NodeExportDir is node k's --cfs-export: ExportDir for node 1, and for
// the others a directory of their own, where a node keeps its copy when
// it is the replica (ssi cfs replica K) and which it serves after taking
// over.
func NodeExportDir(dir string, k int) string {
	if k == 1 {
		return ExportDir(dir)
	}
	return filepath.Join(dir, "root-node"+strconv.Itoa(k))
}

// PIDFile is node k's PID file.
func PIDFile(dir string, k int) string { return filepath.Join(NodeDir(dir, k), "ssi.pid") }

// Client returns a control client for node k.
func Client(dir string, k int) ssiv1connect.ControlClient {
	return ssiv1connect.NewControlClient(transport.NewUnixClient(Socket(dir, k)), "http://ssi")
}

// Up creates (or restarts) the cluster and returns when every node is UP.
func Up(ctx context.Context, o Options) error {
	if o.Nodes < 1 {
		return fmt.Errorf("--nodes must be at least 1")
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the ssi binary: %w", err)
		}
		o.Binary = exe
	}
	if o.Timeout == 0 {
		o.Timeout = 30*time.Second + time.Duration(o.Nodes)*500*time.Millisecond
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Isolate && os.Geteuid() != 0 {
		return errors.New("--isolate needs root (it creates namespaces and a bridge)")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", o.Dir, err)
	}
	o.Dir = abs
	if running := Running(o.Dir); len(running) > 0 {
		return fmt.Errorf("a cluster is already running in %s (nodes %v); stop it with 'ssi down --dir %s'", o.Dir, running, o.Dir)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var net *isolation
	if o.Isolate {
		if net, err = newIsolation(o.Dir, o.Nodes); err != nil {
			return err
		}
		o.BaseIP = net.addr(1)
	}
	addrs := make([]netip.Addr, o.Nodes+1)
	macs := make([]string, o.Nodes+1)
	for k := 1; k <= o.Nodes; k++ {
		if addrs[k], err = nodeaddr.NextIP(o.BaseIP, k-1); err != nil {
			return err
		}
		if macs[k], err = nodeaddr.NextMAC(o.BaseMAC, k-1); err != nil {
			return err
		}
	}
	fresh := !node.DataDir(NodeDir(o.Dir, 1)).Exists()
	if fresh {
		fmt.Fprintf(o.Progress, "creating cluster %s with %d nodes in %s\n", o.ClusterName, o.Nodes, o.Dir)
		if _, err := node.Init(node.InitOptions{DataDir: node.DataDir(NodeDir(o.Dir, 1)), ClusterName: o.ClusterName,
			HWAddr: macs[1], IPAddr: addrs[1].String(), Config: o.Config}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(o.Progress, "restarting the cluster in %s\n", o.Dir)
	}
	// Start node 1 and every node that already exists (a restart: they
	// need each other for a quorum), then wait for them.
	existing := []uint32{1}
	for _, k := range Nodes(o.Dir) {
		if k > 1 && k <= o.Nodes && node.DataDir(NodeDir(o.Dir, k)).Exists() {
			existing = append(existing, uint32(k))
		}
	}
	for _, k := range existing {
		if err := start(o, net, int(k), nil); err != nil {
			return err
		}
	}
	if err := waitUp(ctx, o.Dir, 1, existing); err != nil {
		return err
	}
	if fresh && net != nil {
		if err := net.setJobPool(ctx, o.Dir); err != nil {
			return err
		}
	}
	started := map[int]bool{}
	for _, k := range existing {
		started[int(k)] = true
	}
	// Register the nodes that do not exist yet, in one replicated change.
	var specs []*ssiv1.NodeSpec
	var newNodes []int
	for k := 2; k <= o.Nodes; k++ {
		if !node.DataDir(NodeDir(o.Dir, k)).Exists() {
			specs = append(specs, &ssiv1.NodeSpec{Hwaddr: macs[k], Ipaddr: addrs[k].String(), Num: uint32(k)})
			newNodes = append(newNodes, k)
		}
	}
	tokens := map[int]string{}
	if len(specs) > 0 {
		resp, err := Client(o.Dir, 1).AddNodes(ctx, connect.NewRequest(&ssiv1.AddNodesRequest{Nodes: specs}))
		if err != nil {
			return fmt.Errorf("register nodes 2-%d on node 1: %w", o.Nodes, err)
		}
		for i, a := range resp.Msg.Nodes {
			tokens[newNodes[i]] = a.Token
		}
	}
	server := node.Meta{IPAddr: addrs[1].String(), Port: portOf(o.Config)}.Addr()
	errs := make([]error, o.Nodes+1)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for k := 2; k <= o.Nodes; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			var joinArgs []string
			if tok, ok := tokens[k]; ok {
				joinArgs = []string{"join", "--data-dir", NodeDir(o.Dir, k), "--server", server, "--token", tok, "--hwaddr", macs[k]}
			}
			if !started[k] {
				errs[k] = start(o, net, k, joinArgs)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := make([]uint32, o.Nodes)
	for k := range all {
		all[k] = uint32(k + 1)
	}
	fmt.Fprintf(o.Progress, "waiting for %d nodes to be UP\n", o.Nodes)
	if err := waitUp(ctx, o.Dir, 1, all); err != nil {
		return err
	}
	waitMounted(ctx, o.Dir, o.Nodes, o.Progress)
	return nil
}

// waitMounted waits (a little) until every node has mounted the cluster
// filesystem, seen in the mount namespace of its daemon's process; a node
// that has not is reported, not an error (its log says why).
func waitMounted(ctx context.Context, dir string, n int, progress io.Writer) {
	deadline := time.Now().Add(10 * time.Second)
	for k := 1; k <= n; k++ {
		for !Mounted(dir, k) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				fmt.Fprintf(progress, "node %d has not mounted the cluster filesystem yet (see %s)\n", k, filepath.Join(NodeDir(dir, k), "ssi.log"))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// Mounted says whether node k's cluster filesystem is mounted, in its own
// mount namespace.
func Mounted(dir string, k int) bool {
	pid, ok := PID(dir, k)
	if !ok {
		return false
	}
	ms, err := mountinfo.ReadPID(pid)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Point == MountDir(dir, k) && m.FSType == "fuse.cfs" {
			return true
		}
	}
	return false
}

func portOf(c state.Config) int {
	if c.Port == 0 {
		return state.DefaultPort
	}
	return c.Port
}

// start runs node k's daemon in the background, detached from this process.
// joinArgs, when not nil, are the arguments of an `ssi join` that must run
// first (from inside the node's namespace with --isolate).
func start(o Options, net *isolation, k int, joinArgs []string) error {
	dir := NodeDir(o.Dir, k)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("node %d: %w", k, err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "ssi.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node %d: open log: %w", k, err)
	}
	defer logf.Close()
	// Nodes on one machine share its kernel: count each node's own processes.
	args := []string{"daemon", "--data-dir", dir, "--socket", Socket(o.Dir, k), "--pid-file", PIDFile(o.Dir, k), "--load-source", "jobs",
		"--cfs-mount", MountDir(o.Dir, k), "--cfs-export", NodeExportDir(o.Dir, k)}
	if o.JobRoot {
		args = append(args, "--cfs-job-root")
	}
	if o.Raft.HeartbeatTimeout > 0 {
		args = append(args, "--raft-heartbeat-timeout", o.Raft.HeartbeatTimeout.String())
	}
	if o.Raft.ElectionTimeout > 0 {
		args = append(args, "--raft-election-timeout", o.Raft.ElectionTimeout.String())
	}
	if net != nil {
		return net.start(o, k, args, logf, joinArgs)
	}
	if joinArgs != nil {
		if out, err := exec.Command(o.Binary, joinArgs...).CombinedOutput(); err != nil {
			return fmt.Errorf("node %d: %s: %w", k, strings.TrimSpace(string(out)), err)
		}
	}
	cmd := exec.Command(o.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %d: start daemon: %w", k, err)
	}
	// The daemon writes its own PID file; write it here too so that a
	// daemon dying at start is still found by 'ssi down'.
	_ = os.WriteFile(PIDFile(o.Dir, k), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	go cmd.Wait() //nolint:errcheck // reap if it exits while we run
	return nil
}

// waitUp polls node via's status until every node in nums is UP.
func waitUp(ctx context.Context, dir string, via int, nums []uint32) error {
	c := Client(dir, via)
	var last string
	for {
		resp, err := c.Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{}))
		if err == nil {
			states := map[uint32]ssiv1.NodeState{}
			for _, n := range resp.Msg.Nodes {
				states[n.Num] = n.State
			}
			var waiting []string
			for _, n := range nums {
				if states[n] != ssiv1.NodeState_NODE_STATE_UP {
					waiting = append(waiting, fmt.Sprintf("%d:%s", n, states[n].Label()))
				}
			}
			if len(waiting) == 0 {
				return nil
			}
			last = "still waiting for " + strings.Join(waiting, " ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster in %s did not come up in time: %s (see %s/node*/ssi.log)", dir, last, dir)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Nodes lists the node numbers that have a directory in dir.
func Nodes(dir string) []int {
	ents, _ := os.ReadDir(dir)
	var out []int
	for _, e := range ents {
		if k, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "node")); err == nil && strings.HasPrefix(e.Name(), "node") && k > 0 {
			out = append(out, k)
		}
	}
	sort.Ints(out)
	return out
}

// PID returns node k's daemon PID if its PID file names a live process.
func PID(dir string, k int) (int, bool) {
	b, err := os.ReadFile(PIDFile(dir, k))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	// A daemon killed with SIGKILL leaves its PID file behind, and PIDs
	// are reused (pid_max is often 32768): only a process that is this
	// node's daemon counts, or `ssi down` would signal a stranger.
	return pid, syscall.Kill(pid, 0) == nil && !zombie(pid) && isDaemonOf(pid, NodeDir(dir, k))
}

// isDaemonOf reports whether process pid runs `ssi daemon --data-dir dir`
// (directly, or under the init of an --isolate node).
func isDaemonOf(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	want, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	daemon := false
	for i, a := range args {
		if a == "daemon" {
			daemon = true
		}
		if daemon && a == "--data-dir" && i+1 < len(args) {
			if got, err := filepath.Abs(args[i+1]); err == nil && got == want {
				return true
			}
		}
	}
	return false
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// waitExit waits until one of pids exits or d passes: the daemons are not
// our children, so it waits on their pidfds (Linux 5.3+), which become
// readable at exit. Where pidfds are unavailable it waits d/10 at most.
func waitExit(pids map[int]int, d time.Duration) {
	var fds []unix.PollFd
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		defer unix.Close(fd)
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	if len(fds) < len(pids) {
		d = min(d, 20*time.Millisecond) // some pid without a pidfd: look again soon
	}
	if len(fds) == 0 {
		time.Sleep(d)
		return
	}
	_, _ = unix.Poll(fds, int(d.Milliseconds())+1)
}

// Running lists the nodes in dir whose daemons are alive.
func Running(dir string) []int {
	var out []int
	for _, k := range Nodes(dir) {
		if _, ok := PID(dir, k); ok {
			out = append(out, k)
		}
	}
	return out
}

// Down stops every daemon in dir: SIGTERM, then SIGKILL after grace. It
// returns when no daemon of the cluster is left.
func Down(dir string, grace time.Duration) ([]int, error) {
	var stopped []int
	pids := map[int]int{}
	for _, k := range Nodes(dir) {
		if pid, ok := PID(dir, k); ok {
			pids[k] = pid
			_ = syscall.Kill(pid, syscall.SIGTERM)
			stopped = append(stopped, k)
		}
	}
	deadline := time.Now().Add(grace)
	killed := false
	for len(pids) > 0 {
		for k, pid := range pids {
			if syscall.Kill(pid, 0) != nil || zombie(pid) {
				delete(pids, k)
				os.Remove(PIDFile(dir, k))
			}
		}
		if len(pids) == 0 {
			break
		}
		if !killed && time.Now().After(deadline) {
			for k, pid := range pids {
				slog.Warn("daemon did not stop in time; killing it", "node", k, "pid", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			killed = true
		}
		wait := time.Until(deadline)
		if killed || wait < 0 {
			wait = time.Second
		}
		waitExit(pids, wait)
	}
	// A node that was killed leaves its cluster filesystem mounted with
	// nobody serving it (every access fails with ENOTCONN).
	for _, k := range Nodes(dir) {
		unmountDead(MountDir(dir, k))
	}
	if err := cleanupIsolation(dir); err != nil {
		return stopped, err
	}
	return stopped, nil
}

// unmountDead takes away a mount at path whose daemon is gone (STATFS
// always reaches the filesystem, where a stat could be answered from a
// cached attribute).
func unmountDead(path string) {
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(path, &sfs); errors.Is(err, syscall.ENOTCONN) {
		if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil {
			slog.Warn("cannot unmount a dead cluster filesystem mount", "path", path, "err", err)
		}
	}
}
