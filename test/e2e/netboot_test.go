//go:build vm

// The network boot in real virtual machines (make test-vm; docs/NETBOOT.md):
// QEMU under software emulation boots Debian's stock kernel with the
// initramfs of ssi mkinitrd, against node 1, a daemon on this machine in a
// network namespace serving DHCP and the cluster root.

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/netboot"
)

var tokenRE = regexp.MustCompile(`SSI1-[0-9a-f]{32}-[0-9a-f]{64}`)

// netbootKernel fetches (once) and returns Debian's kernel and modules.
func netbootKernel(t *testing.T) (string, string) {
	out, err := exec.Command("bash", "../../scripts/netboot-kernel.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/netboot-kernel.sh: %v: %s", err, out)
	}
	k, m, err := netboot.FindKernel(netboot.DefaultKernelCache())
	if err != nil {
		t.Fatal(err)
	}
	return k, m
}

func staticSSI(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "ssi-static")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "../../cmd/ssi")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v: %s", err, out)
	}
	return bin
}

// waitConsole waits until the console log holds want.
func waitConsole(t *testing.T, path, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(want)) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q after %v; the console:\n%s", path, want, timeout, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// copyWithLibs puts a dynamically linked tool and the libraries ldd
// names into root, for jobs that run with the cluster root as their /.
func copyWithLibs(t *testing.T, root, tool string) {
	out, err := exec.Command("ldd", tool).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", tool, err)
	}
	files := []string{tool}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			files = append(files, f)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNetbootVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("boots QEMU guests on a bridge in a network namespace: needs root (CI runs as root)")
	}
	if err := netboot.VMReady(); err != nil {
		t.Fatalf("this test needs what scripts/deps.sh installs: %v", err)
	}
	kernel, modules := netbootKernel(t)
	static := staticSSI(t)
	dir := t.TempDir()
	env := []string{"SSI_SOCKET=" + netboot.VMSocket(dir)}

	// Node 1 and one diskless guest, by the user's command.
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, ssiBin, "vm", "up", "--nodes", "1", "--dir", dir, "--binary", static,
		"--kernel", kernel, "--kernel-modules", modules, "--timeout", "3m")
	var upOut bytes.Buffer
	up.Stdout, up.Stderr = &upOut, &upOut
	err := up.Run()
	t.Cleanup(func() {
		r := run(t, nil, "", "ssi", "vm", "down", "--dir", dir)
		if t.Failed() {
			for _, f := range []string{"node1/ssi.log", "node2/console.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("==== %s\n%s", f, b)
			}
		}
		if r.Code != 0 {
			t.Errorf("ssi vm down: %v", r)
		}
	})
	if err != nil {
		t.Fatalf("ssi vm up: %v\n%s", err, upOut.String())
	}
	t.Logf("ssi vm up:\n%s", upOut.String())
	m := regexp.MustCompile(`node 2 is UP \(([0-9.]+)s after the guests started\)`).FindStringSubmatch(upOut.String())
	if m == nil {
		t.Fatalf("ssi vm up did not say when node 2 was UP:\n%s", upOut.String())
	}
	console := waitConsole(t, netboot.VMConsole(dir, 2), netboot.RootInitBanner+" on vm2 (PID 1)", 60*time.Second)
	// Every step logged with its timing, in order.
	last := -1
	for _, step := range []string{"mount /proc, /sys, /dev: ok", "load kernel modules: ok", "network interface eth0, MAC " + netboot.VMMAC(2),
		"address " + netboot.VMAddr(2).String() + " from DHCP", "joined cluster vm as node 2", "start the ssi daemon: ok",
		"mount the cluster root on /newroot: ok", "switch_root into the cluster root: ok", netboot.HandoverMarker + "/bin/ssi"} {
		i := strings.Index(console, step)
		if i < 0 || i < last {
			t.Fatalf("console lacks %q (or out of order):\n%s", step, console)
		}
		last = i
	}
	handover := regexp.MustCompile(`handing over to /bin/ssi after ([0-9.]+)s in the initramfs \(([0-9.]+)s since the kernel started\)`).FindStringSubmatch(console)
	// The baseline, from the same boot: the kernel's own time until it ran
	// /init, which ssi does not control (decompression under emulation).
	kinit := regexp.MustCompile(`ssi network boot \(kernel up for ([0-9.]+)s\)`).FindStringSubmatch(console)
	upS, _ := strconv.ParseFloat(m[1], 64)
	kS, _ := strconv.ParseFloat(kinit[1], 64)
	t.Logf("NETBOOT-FIGURES qemu-start-to-UP=%ss kernel-start-to-/init=%ss (baseline) ratio=%.2f initramfs=%ss kernel-start-to-handover=%ss vm-up-total=%.1fs",
		m[1], kinit[1], upS/kS, handover[1], handover[2], time.Since(start).Seconds())

	// UP in cluster -V, at the address DHCP gave it.
	r := run(t, env, "", "cluster", "-V")
	if r.Code != 0 || !regexp.MustCompile(`(?m)^2\s+vm2\s+UP\s+`+regexp.QuoteMeta(netboot.VMAddr(2).String())+`\s`).MatchString(r.Stdout) {
		t.Fatalf("cluster -V:\n%v", r)
	}
	// onnode runs on the guest's kernel (not this machine's), in the
	// cluster root: a tool node 1 adds to its export now is there.
	copyWithLibs(t, filepath.Join(dir, "root"), "/bin/cat")
	want, _ := os.ReadFile(filepath.Join(filepath.Dir(modules), "..", "version"))
	r = run(t, env, "", "onnode", "2", "/bin/cat", "/proc/sys/kernel/osrelease")
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if r.Code != 0 || strings.TrimSpace(r.Stdout) != strings.TrimSpace(string(want)) || r.Stdout == string(host) {
		t.Fatalf("onnode 2 cat osrelease: %v (want the guest kernel %s; this machine's is %s)", r, want, host)
	}
	r = run(t, env, "", "onnode", "2", "/bin/cat", "/proc/sys/kernel/hostname")
	if r.Code != 0 || strings.TrimSpace(r.Stdout) != "vm2" {
		t.Fatalf("onnode 2 cat hostname: %v", r)
	}

	t.Run("rescue", func(t *testing.T) { netbootRescue(t, dir, env, kernel) })
	t.Run("vm-up-reports-rescue", func(t *testing.T) { vmUpRescue(t, static, kernel, modules, filepath.Join(dir, "initrd")) })
}

// vmUpRescue: a cluster root without an init (node 1 exports a tree with
// only the node's directories) ends the boot at the rescue message, and
// ssi vm up stops at once with it (exit 1) instead of waiting out its
// timeout; ssi vm down cleans up.
func vmUpRescue(t *testing.T, static, kernel, modules, initrd string) {
	dir, root := t.TempDir(), t.TempDir()
	for _, d := range []string{"proc", "dev", "sys", "run", "tmp"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, ssiBin, "vm", "up", "--nodes", "1", "--dir", dir, "--binary", static, "--root", root, "--initrd", initrd,
		"--kernel", kernel, "--kernel-modules", modules, "--timeout", "4m")
	var out bytes.Buffer
	up.Stdout, up.Stderr = &out, &out
	start := time.Now()
	err := up.Run()
	t.Cleanup(func() {
		if r := run(t, nil, "", "ssi", "vm", "down", "--dir", dir); r.Code != 0 {
			t.Errorf("ssi vm down: %v", r)
		}
	})
	code := -1
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	for _, w := range []string{"stopped at the rescue message", "failed step: switch_root into the cluster root", "/sbin/init", "--cfs-export", "ssi vm down --dir " + dir} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("ssi vm up's output lacks %q:\n%s", w, out.String())
		}
	}
	if code != 1 || time.Since(start) > 3*time.Minute {
		t.Errorf("ssi vm up: exit %d after %v, want 1 well before its 4m timeout:\n%s", code, time.Since(start), out.String())
	}
}

// netbootRescue boots three guests that must each stop at the rescue
// message with the right reason: a wrong token, an unregistered MAC, an
// unreachable node 1.
func netbootRescue(t *testing.T, dir string, env []string, kernel string) {
	ns := netboot.VMNetnsName(dir)
	add := func(k int) string {
		r := run(t, env, "", "ssi-addnode", "--hwaddr", netboot.VMMAC(k), "--ipaddr", netboot.VMAddr(k).String())
		tok := tokenRE.FindString(r.Stdout + r.Stderr)
		if r.Code != 0 || tok == "" {
			t.Fatalf("ssi-addnode node %d: %v", k, r)
		}
		return tok
	}
	tok3, tok4 := add(3), add(4)
	// The same secret's length and the cluster's fingerprint, one digit off.
	wrong := tok3[:5] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", tok3[5])+1)%16]) + tok3[6:]
	server := netboot.VMAddr(1).String() + ":7470"
	cases := []struct {
		num               int
		mac, cmdline      string
		step, reason, fix string
	}{
		{3, netboot.VMMAC(3), "ssi.server=" + server + " ssi.token=" + wrong,
			"failed step: join the cluster", "", "refused the join token"},
		{9, netboot.VMMAC(0x99), "ssi.server=" + server + " ssi.token=" + tok4,
			"failed step: DHCP on eth0", "no DHCP answer for " + netboot.VMMAC(0x99), "is it registered"},
		{4, netboot.VMMAC(4), "ssi.server=" + netboot.VMAddr(250).String() + ":7470 ssi.token=" + tok4,
			"failed step: join the cluster through " + netboot.VMAddr(250).String(), "", "cannot reach the cluster at " + netboot.VMAddr(250).String()},
	}
	for _, c := range cases {
		tap := "rtap" + strconv.Itoa(c.num)
		for _, a := range [][]string{{"tuntap", "add", "dev", tap, "mode", "tap"}, {"link", "set", tap, "master", netboot.VMBridge}, {"link", "set", tap, "up"}} {
			if out, err := exec.Command("ip", append([]string{"-n", ns}, a...)...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", a, err, out)
			}
		}
		g := netboot.Guest{Num: c.num, MAC: c.mac, Tap: tap, Kernel: kernel, Initrd: filepath.Join(dir, "initrd"), Memory: 512,
			Cmdline: c.cmdline + " ssi.timeout=5s", Console: filepath.Join(dir, "rescue"+strconv.Itoa(c.num), "console.log")}
		cmd, err := netboot.StartGuest(ns, g)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	for _, c := range cases {
		con := waitConsole(t, filepath.Join(dir, "rescue"+strconv.Itoa(c.num), "console.log"), "no kernel panic", 3*time.Minute)
		if !strings.Contains(con, netboot.RescueMarker) {
			t.Errorf("guest %d: no rescue marker:\n%s", c.num, con)
		}
		for _, w := range []string{"RESCUE", c.step, c.reason, "check:", c.fix} {
			if !strings.Contains(con, w) {
				t.Errorf("guest %d: the console lacks %q:\n%s", c.num, w, con)
			}
		}
		if strings.Contains(con, "Kernel panic") || strings.Contains(con, "start the ssi daemon") {
			t.Errorf("guest %d went past the failure:\n%s", c.num, con)
		}
	}
	// The refused and unreachable nodes never joined.
	r := run(t, env, "", "cluster", "-V")
	for _, k := range []int{3, 4} {
		if !regexp.MustCompile(fmt.Sprintf(`(?m)^%d\s+vm%d\s+NEVERUP`, k, k)).MatchString(r.Stdout) {
			t.Errorf("node %d is not NEVERUP:\n%v", k, r)
		}
	}
}
