package devcluster

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/nsinit"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// isolation is the private network of an --isolate cluster: a bridge in a
// network namespace of its own (no address, no route out), and per node a
// network namespace joined to it by a veth pair. Node k's daemon runs under
// our init (internal/nsinit) as PID 1 of new PID, UTS, mount and network
// namespaces, with its own hostname and /proc, like a separate machine.
type isolation struct {
	Prefix string       `json:"prefix"` // names of namespaces and links
	Subnet netip.Prefix `json:"subnet"`
	dir    string
}

func isolationFile(dir string) string { return filepath.Join(dir, "isolate.json") }

func (i *isolation) bridgeNS() string      { return i.Prefix + "-br" }
func (i *isolation) nodeNS(k int) string   { return i.Prefix + "-n" + strconv.Itoa(k) }
func (i *isolation) hostVeth(k int) string { return i.Prefix + "v" + strconv.Itoa(k) }

// addr is node k's address on the private network.
func (i *isolation) addr(k int) netip.Addr {
	a, _ := nodeaddr.NextIP(i.Subnet.Addr().Next(), k-1)
	return a
}

func newIsolation(dir string, n int) (*isolation, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("--isolate needs the ip command (Debian package iproute2)")
	}
	if n > 65000 {
		return nil, errors.New("--isolate supports at most 65000 nodes")
	}
	i := &isolation{dir: dir}
	if b, err := os.ReadFile(isolationFile(dir)); err == nil {
		if err := json.Unmarshal(b, i); err != nil {
			return nil, fmt.Errorf("read %s: %w", isolationFile(dir), err)
		}
	} else {
		sum := sha256.Sum256([]byte(dir))
		i.Prefix = fmt.Sprintf("ssi%x", sum[:3])
		// A /16 in 10.0.0.0/8 that lives only inside our namespaces.
		i.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100 + sum[3]%100, 0, 0}), 16)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
		b, _ := json.Marshal(i)
		if err := os.WriteFile(isolationFile(dir), b, 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", isolationFile(dir), err)
		}
	}
	br := i.bridgeNS()
	if !netnsExists(br) {
		if err := ipCmd("netns", "add", br); err != nil {
			return nil, err
		}
		for _, args := range [][]string{
			{"-n", br, "link", "set", "lo", "up"},
			{"-n", br, "link", "add", "br0", "type", "bridge"},
			{"-n", br, "link", "set", "br0", "up"},
		} {
			if err := ipCmd(args...); err != nil {
				return nil, err
			}
		}
	}
	return i, nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// start runs node k: our init in fresh namespaces, held at its sync gate
// until the node's network is wired and (for a new node) it has joined.
func (i *isolation) start(o Options, k int, args []string, logf *os.File, joinArgs []string) error {
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("node %d: %w", k, err)
	}
	defer syncR.Close()
	defer syncW.Close()
	// The daemon's PID inside its namespace means nothing outside: the PID
	// file holds the init's host PID instead (killing it ends the node).
	var daemonArgs []string
	for j := 0; j < len(args); j++ {
		if args[j] == "--pid-file" {
			j++
			continue
		}
		daemonArgs = append(daemonArgs, args[j])
	}
	hostname := fmt.Sprintf("%s%d", state.DefaultNamePrefix(o.ClusterName), k)
	initArgs := nsinit.Options{Hostname: hostname, MountProc: true, SyncFD: 3, NoCtty: true}.Args(append([]string{o.Binary}, daemonArgs...))
	cmd := exec.Command(o.Binary, append([]string{nsinit.Command}, initArgs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{syncR}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %d: start isolated init: %w", k, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() //nolint:errcheck // reap if it exits while we run
	fail := func(err error) error {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return fmt.Errorf("node %d: %w", k, err)
	}
	_ = os.WriteFile(PIDFile(o.Dir, k), []byte(strconv.Itoa(pid)+"\n"), 0o644)
	ns, veth, br := i.nodeNS(k), i.hostVeth(k), i.bridgeNS()
	if netnsExists(ns) {
		_ = ipCmd("netns", "del", ns)
	}
	_ = ipCmd("-n", br, "link", "del", veth) // a leftover from an earlier run, if any
	for _, a := range [][]string{
		{"netns", "attach", ns, strconv.Itoa(pid)},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", veth, "netns", br},
		{"-n", br, "link", "set", veth, "master", "br0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", netip.PrefixFrom(i.addr(k), i.Subnet.Bits()).String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
	} {
		if err := ipCmd(a...); err != nil {
			return fail(err)
		}
	}
	if joinArgs != nil {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, o.Binary}, joinArgs...)...).CombinedOutput()
		if err != nil {
			return fail(fmt.Errorf("join from inside its namespace: %w: %s", err, strings.TrimSpace(string(out))))
		}
	}
	if _, err := syncW.Write([]byte{1}); err != nil {
		return fail(fmt.Errorf("release the init: %w", err))
	}
	return nil
}

// cleanupIsolation removes the namespaces of an --isolate cluster.
func cleanupIsolation(dir string) error {
	b, err := os.ReadFile(isolationFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", isolationFile(dir), err)
	}
	var i isolation
	if err := json.Unmarshal(b, &i); err != nil {
		return fmt.Errorf("parse %s: %w", isolationFile(dir), err)
	}
	ents, _ := os.ReadDir("/run/netns")
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), i.Prefix+"-") {
			if err := ipCmd("netns", "del", e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// jobPool is the default address pool of --net jobs on an --isolate
// cluster: 10.X.1.1 to 10.X.1.254 of its /16 (the nodes are 10.X.0.k).
func (i *isolation) jobPool() *ssiv1.NetPool {
	a := i.Subnet.Addr().As4()
	first, last := a, a
	first[2], first[3] = 1, 1
	last[2], last[3] = 1, 254
	return &ssiv1.NetPool{First: netip.AddrFrom4(first).String(), Last: netip.AddrFrom4(last).String(), Bits: uint32(i.Subnet.Bits())}
}

// setJobPool gives a new --isolate cluster its pool of --net addresses
// (ssi net pool), through node 1.
func (i *isolation) setJobPool(ctx context.Context, dir string) error {
	c := ssiv1connect.NewJobNetClient(transport.NewUnixClient(Socket(dir, 1)), "http://ssi")
	p := i.jobPool()
	if _, err := c.SetPool(ctx, connect.NewRequest(&ssiv1.SetNetPoolRequest{Pool: p})); err != nil {
		return fmt.Errorf("setting the address pool of --net jobs (%s-%s) on node 1: %w", p.First, p.Last, err)
	}
	return nil
}
