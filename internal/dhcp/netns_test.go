//go:build linux

package dhcp

import (
	"bytes"
	"context"
	"fmt"
	"github.com/ssi-cluster/ssi/internal/dhcp/udhcpctest"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"golang.org/x/sys/unix"
)

// The namespace test runs the server against busybox's udhcpc, a DHCP
// client written by others, across a veth pair between two network
// namespaces it creates: 10.250.7.0/24 exists only there, and neither
// namespace has a route anywhere else. docs/PROVISIONING.md shows the same
// steps as shell commands.

// inNetns creates a socket (or anything else) inside the network namespace
// ns: on a locked OS thread switched into ns that is discarded afterwards.
// Sockets keep the namespace they were created in.
func inNetns[T any](ns string, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		var zero T
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			ch <- result{zero, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{zero, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		v, err := fn()
		ch <- result{v, err}
	}()
	r := <-ch
	return r.v, r.err
}

func readEvents(t *testing.T, file string) []udhcpctest.Event {
	t.Helper()
	evs, err := udhcpctest.ReadEvents(file)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// waitFor polls cond until it holds, for at most 20 seconds (a hang
// guard: udhcpc answers within a few seconds, its NAK back-off included).
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

func TestUdhcpcInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces (ip netns add)")
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("skipped: ip netns unavailable: iproute2's ip is not installed")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox is not installed; its udhcpc is the real DHCP client this test runs: apt-get install busybox")
	}
	// The whole test is bounded; every step below runs under ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	id := os.Getpid() % 100000
	srvNS, cliNS := fmt.Sprintf("ssi-dhcp-%d-s", id), fmt.Sprintf("ssi-dhcp-%d-c", id)
	srvIf, cliIf := fmt.Sprintf("sd%ds", id), fmt.Sprintf("sd%dc", id)
	ipCmd := func(args ...string) error {
		out, err := exec.CommandContext(ctx, ipBin, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := ipCmd("netns", "add", srvNS); err != nil {
		t.Skipf("skipped: ip netns unavailable: %v", err)
	}
	t.Cleanup(func() { exec.Command(ipBin, "netns", "del", srvNS).Run() })
	if err := ipCmd("netns", "add", cliNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command(ipBin, "netns", "del", cliNS).Run() })
	for _, args := range [][]string{
		{"link", "add", srvIf, "netns", srvNS, "type", "veth", "peer", "name", cliIf, "netns", cliNS},
		{"-n", srvNS, "addr", "add", "10.250.7.1/24", "dev", srvIf},
		{"-n", srvNS, "link", "set", srvIf, "up"},
		{"-n", cliNS, "link", "set", cliIf, "address", "0a:00:00:00:11:d2"},
		{"-n", cliNS, "link", "set", cliIf, "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}

	// The server, in-process, with its socket in the server namespace.
	const mac = "0a:00:00:00:11:d2"
	reg := newRegistry(map[string]Binding{mac: {Num: 2, Hostname: "ssi2", IP: netip.MustParseAddr("10.250.7.42")}})
	leases := &leaseLog{}
	logs := &syncBuffer{}
	srv, err := New(Settings{
		Interface: srvIf,
		ServerIP:  netip.MustParseAddr("10.250.7.1"),
		Netmask:   netip.MustParseAddr("255.255.255.0"),
		Router:    []netip.Addr{netip.MustParseAddr("10.250.7.1")},
		DNS:       []netip.Addr{netip.MustParseAddr("10.250.7.1")},
		Domain:    "ssi.test",
		LeaseTime: 120 * time.Second,
		Now:       func() time.Time { return clock },
	}, reg, leases, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := inNetns(srvNS, func() (net.PacketConn, error) {
		return server4.NewIPv4UDPConn(srvIf, &net.UDPAddr{Port: 67})
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(sctx, conn) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("ServeConn: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})

	dir := t.TempDir()
	events := filepath.Join(dir, "events")
	script := filepath.Join(dir, "udhcpc.script")
	if err := udhcpctest.WriteScript(script, events); err != nil {
		t.Fatal(err)
	}
	udhcpc := func(args ...string) *exec.Cmd {
		base := []string{"netns", "exec", cliNS, busybox, "udhcpc", "-f", "-i", cliIf, "-s", script, "-t", "2", "-T", "1", "-n"}
		return exec.CommandContext(ctx, ipBin, append(base, args...)...)
	}

	t.Run("registered MAC gets its address", func(t *testing.T) {
		out, err := udhcpc("-q").CombinedOutput()
		if err != nil {
			t.Fatalf("udhcpc: %v\n%s", err, out)
		}
		got := udhcpctest.LastBound(readEvents(t, events))
		want := udhcpctest.Event{
			"event": "bound", "ip": "10.250.7.42", "subnet": "255.255.255.0", "mask": "24",
			"router": "10.250.7.1", "dns": "10.250.7.1", "domain": "ssi.test", "hostname": "ssi2",
			"lease": "120", "serverid": "10.250.7.1", "broadcast": "10.250.7.255", "message": "",
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("udhcpc got %s=%q, want %q", k, got[k], v)
			}
		}
		ls := leases.list()
		if len(ls) == 0 || ls[len(ls)-1] != (lease{mac, netip.MustParseAddr("10.250.7.42"), clock.Add(120 * time.Second)}) {
			t.Errorf("leases recorded: %+v", ls)
		}
	})

	t.Run("unregistered MAC gets nothing", func(t *testing.T) {
		if err := ipCmd("-n", cliNS, "link", "set", cliIf, "address", "0a:00:00:00:11:ee"); err != nil {
			t.Fatal(err)
		}
		defer ipCmd("-n", cliNS, "link", "set", cliIf, "address", mac)
		before := len(readEvents(t, events))
		ignored := srv.Stats().Ignored
		out, err := udhcpc("-q").CombinedOutput()
		if err == nil {
			t.Fatalf("udhcpc succeeded for an unregistered MAC:\n%s", out)
		}
		for _, ev := range readEvents(t, events)[before:] {
			if ev["event"] == "bound" {
				t.Errorf("unregistered MAC was bound: %v", ev)
			}
		}
		if n := srv.Stats().Ignored - ignored; n < 2 {
			t.Errorf("server saw %d packets from the client, want its 2 DISCOVERs", n)
		}
		if n := strings.Count(logs.String(), "ignoring unregistered MAC address (register it with ssi-addnode --hwaddr)\" mac=0a:00:00:00:11:ee"); n != 1 {
			t.Errorf("unknown MAC logged %d times, want once", n)
		}
	})

	t.Run("re-registered node gets the new address on renewal", func(t *testing.T) {
		before := len(readEvents(t, events))
		cmd := udhcpc()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			<-exited
			if t.Failed() {
				t.Logf("udhcpc output:\n%s", out.String())
			}
		}()
		boundTo := func(ip string) func() bool {
			return func() bool {
				b := udhcpctest.LastBound(readEvents(t, events)[before:])
				return b != nil && b["ip"] == ip
			}
		}
		waitFor(t, ctx, "the first lease", boundTo("10.250.7.42"))

		reg.set(mac, Binding{Num: 2, Hostname: "ssi2", IP: netip.MustParseAddr("10.250.7.77")})
		if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil { // udhcpc: renew now
			t.Fatal(err)
		}
		waitFor(t, ctx, "a lease of the new address", boundTo("10.250.7.77"))
		sawNak := false
		for _, ev := range readEvents(t, events)[before:] {
			if ev["event"] == "nak" {
				sawNak = true
				if !strings.Contains(ev["message"], "10.250.7.42 is not the address of ssi2") {
					t.Errorf("NAK message %q", ev["message"])
				}
			}
		}
		if !sawNak {
			t.Errorf("the renewal of the old address was not NAKed")
		}

		if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil { // udhcpc: release
			t.Fatal(err)
		}
		released := lease{mac, netip.MustParseAddr("10.250.7.77"), clock}
		waitFor(t, ctx, "the release to be recorded", func() bool {
			ls := leases.list()
			return len(ls) > 0 && ls[len(ls)-1] == released
		})
	})
}
