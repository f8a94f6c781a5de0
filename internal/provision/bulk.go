package provision

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ssi-cluster/ssi/internal/nodeaddr"
)

// MaxBulkNodes bounds one PlanNodes call. (OpenSSI took up to 125 nodes.)
const MaxBulkNodes = 1024

// PlanNodes plans count nodes numbered from startNum, named namePrefix
// followed by the number (ssi2, ssi3, ...), with sequential MAC addresses
// from macBase and sequential IP addresses from ipBase, as the how-to
// numbers its nodes (0a:00:00:00:11:d2 for node 2, ...). No node is marked
// InitNode: the caller decides. It only computes; check the result against
// the registered nodes with CheckOverlap.
func PlanNodes(count int, macBase string, ipBase netip.Addr, startNum int, namePrefix string) ([]Node, error) {
	if count < 1 || count > MaxBulkNodes {
		return nil, fmt.Errorf("%w: node count %d: plan 1 to %d nodes at a time", ErrInvalid, count, MaxBulkNodes)
	}
	if startNum < 1 {
		return nil, fmt.Errorf("%w: first node number %d: node numbers start at 1", ErrInvalid, startNum)
	}
	mac, err := nodeaddr.ParseMAC(macBase)
	if err != nil {
		return nil, fmt.Errorf("MAC address base: %w", err)
	}
	if !ipBase.IsValid() {
		return nil, fmt.Errorf("%w: no IP address base", ErrInvalid)
	}
	if _, err := nodeaddr.ParseIP(ipBase.String()); err != nil {
		return nil, fmt.Errorf("IP address base: %w", err)
	}
	if namePrefix == "" {
		return nil, fmt.Errorf("%w: empty node name prefix", ErrInvalid)
	}
	nodes := make([]Node, 0, count)
	ip := ipBase
	for i := 0; i < count; i++ {
		m, err := nodeaddr.NextMAC(mac, i)
		if err != nil {
			return nil, fmt.Errorf("planning %d nodes from MAC %s: %w", count, mac, err)
		}
		if i > 0 {
			if ip, err = nodeaddr.NextIP(ip, 1); err != nil {
				return nil, fmt.Errorf("planning %d nodes from IP %s: %w", count, ipBase, err)
			}
		}
		if _, err := nodeaddr.ParseIP(ip.String()); err != nil {
			return nil, fmt.Errorf("planning %d nodes from IP %s: %w", count, ipBase, err)
		}
		n := Node{Num: startNum + i, Name: namePrefix + strconv.Itoa(startNum+i), HWAddr: m, IPAddr: ip}
		if err := n.Validate(); err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// CheckOverlap reports every planned node that shares a number, name, MAC
// address or IP address with an existing node or with another planned
// node. The error (wrapping ErrConflict) names both nodes of each clash.
func CheckOverlap(existing, planned []Node) error {
	type owner struct {
		n        Node
		existing bool
	}
	label := func(o owner) string {
		if o.existing {
			return "existing " + o.n.String()
		}
		return "planned " + o.n.String()
	}
	seen := map[string]owner{}
	var errs []error
	add := func(o owner, report bool) {
		keys := []struct{ what, key string }{
			{"node number", "num:" + strconv.Itoa(o.n.Num)},
			{"name", "name:" + o.n.Name},
			{"MAC address", "mac:" + o.n.HWAddr},
			{"IP address", "ip:" + o.n.IPAddr.String()},
		}
		for _, k := range keys {
			if k.key == "ip:invalid IP" || k.key == "mac:" || k.key == "name:" {
				continue
			}
			if prev, dup := seen[k.key]; dup {
				if report {
					errs = append(errs, fmt.Errorf("%w: %s has the same %s as %s", ErrConflict, label(o), k.what, label(prev)))
				}
				continue
			}
			seen[k.key] = o
		}
	}
	for _, n := range existing {
		add(owner{n, true}, false) // clashes among existing nodes are not ours to report
	}
	for _, n := range planned {
		add(owner{n, false}, true)
	}
	return errors.Join(errs...)
}

// ProvisionBulk prepares the host side of nodes: for each one a swap image
// of swapSize bytes (SwapImagePath) and a configuration file in o.Format
// (ConfigPath), creating the layout directories as needed. dir is the
// images directory; o.ImagesDir defaults to it. Existing files are
// replaced only with force. It is all-or-nothing: everything is first
// built under temporary names, then renamed into place; on any failure
// (including ctx being cancelled) every file and directory this call
// created is removed. Root images are not made here (see CreateRootImage).
// It returns the files it created.
func ProvisionBulk(ctx context.Context, dir string, nodes []Node, o GuestOptions, swapSize int64, force bool, progress io.Writer) ([]string, error) {
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%w: no nodes to provision", ErrInvalid)
	}
	if dir == "" {
		return nil, fmt.Errorf("%w: empty images directory", ErrInvalid)
	}
	if o.ImagesDir == "" {
		o.ImagesDir = dir
	}
	o = o.WithDefaults()
	if err := CheckOverlap(nil, nodes); err != nil {
		return nil, err
	}
	if err := checkImageSize("swap image", swapSize, MinSwapImageSize); err != nil {
		return nil, err
	}
	// Render every configuration first: bad input fails before any I/O.
	configs := make([][]byte, len(nodes))
	for i, n := range nodes {
		data, err := RenderConfig(n, o, o.Format)
		if err != nil {
			return nil, err
		}
		configs[i] = data
	}
	if _, err := FindTool("mkswap"); err != nil {
		return nil, err
	}

	var (
		createdDirs []string // in creation order
		staged      []string // temporary files
		installed   []string // final paths this call created or replaced
	)
	ok := false
	defer func() {
		if ok {
			return
		}
		for _, t := range staged {
			os.Remove(t)
		}
		for _, f := range installed {
			os.Remove(f)
		}
		for i := len(createdDirs) - 1; i >= 0; i-- {
			os.Remove(createdDirs[i]) // only if empty
		}
	}()
	mkdir := func(d string) error {
		var missing []string
		for p := d; ; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			missing = append(missing, p)
			if filepath.Dir(p) == p {
				break
			}
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating %s: %w", missing[i], err)
			}
			createdDirs = append(createdDirs, missing[i])
		}
		return nil
	}

	type target struct{ tmp, path string }
	var targets []target
	p := newProgress(progress, 2*len(nodes)+1, "provisioning %d nodes in %s", len(nodes), dir)
	for i, n := range nodes {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("provisioning interrupted: %w", err)
		}
		if err := mkdir(NodeDir(dir, n)); err != nil {
			return nil, err
		}
		if err := mkdir(filepath.Join(dir, "configs")); err != nil {
			return nil, err
		}
		swap := SwapImagePath(dir, n)
		cfg := ConfigPath(dir, n, o.Format)
		for _, f := range []string{swap, cfg} {
			if err := checkTarget(f, force); err != nil {
				return nil, err
			}
		}
		p.step("swap image %s", swap)
		tmp, err := buildSwapTemp(ctx, swap, swapSize)
		if err != nil {
			return nil, err
		}
		staged = append(staged, tmp)
		targets = append(targets, target{tmp, swap})

		p.step("configuration %s", cfg)
		mode := configMode(o)
		tmp, err = writeTemp(cfg, configs[i], mode)
		if err != nil {
			return nil, err
		}
		staged = append(staged, tmp)
		targets = append(targets, target{tmp, cfg})
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("provisioning interrupted: %w", err)
	}
	p.step("installing %d files", len(targets))
	for _, t := range targets {
		if err := commitTemp(t.tmp, t.path, force); err != nil {
			return nil, err
		}
		installed = append(installed, t.path)
	}
	ok = true
	return installed, nil
}
