package cli

// The provisioning commands (docs/PROVISIONING.md): the cluster's DHCP
// settings (ssi dhcp), guest configurations (ssi xen-config), node images
// (ssi images) and the bulk path of ssi-addnode. Host-side work is done by
// internal/provision; cluster data comes from the local daemon.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/provision"
)

// ---- ssi images ----

func init() {
	family := &Command{
		Name:    "images",
		Summary: "create the images directory, root and swap images of virtual nodes",
		Usage:   "ssi images init [DIR] | ssi images root --size SIZE [--from ROOTDIR] [--force] DIR|IMG | ssi images grow IMG SIZE | ssi images swap NODE|IMG --size SIZE [--images DIR] [--force]",
		Help: `The host side of the OpenSSI Xen how-to, without loop mounts or root:
  init  creates DIR/boot, DIR/configs and DIR/nodeN for every registered node
        (default DIR /images/ssi)
  root  creates the init node's root filesystem (ext4, labelled ssi-root) at
        DIR/node1/NAME.img or at IMG, filled from ROOTDIR (mke2fs -d)
  grow  enlarges an ext2/3/4 image in place (e2fsck, then resize2fs); never shrinks
  swap  creates a sparse swap image (mkswap, labelled ssi-swap) for node NODE
        (a number or name) at IMAGES/nodeN/NAME_swap.img, or at IMG
Sizes: 512M, 2G, 1GiB, 1.5G (binary units), whole 4 KiB blocks. Existing
images are replaced only with --force. Needs e2fsprogs and util-linux.

Examples:
  ssi images init /images/ssi
  ssi images root --size 2G --from /srv/debian-root /images/ssi
  ssi images grow /images/ssi/node1/ssi1.img 4G
  ssi images swap 2 --size 64M`,
	}
	subs := map[string]subcommand{
		"init": {&Command{Name: "images init", Summary: "create the images directory layout", Usage: "ssi images init [DIR] [--socket PATH]",
			Help: "Example:\n  ssi images init /images/ssi"}, runImagesInit},
		"root": {&Command{Name: "images root", Summary: "create the init node's root filesystem image", Usage: "ssi images root --size SIZE [--from ROOTDIR] [--force] DIR|IMG",
			Help: "Example:\n  ssi images root --size 2G --from /srv/debian-root /images/ssi"}, runImagesRoot},
		"grow": {&Command{Name: "images grow", Summary: "enlarge an ext2/3/4 image in place", Usage: "ssi images grow IMG SIZE",
			Help: "Shut the guest down first.\n\nExample:\n  ssi images grow /images/ssi/node1/ssi1.img 4G"}, runImagesGrow},
		"swap": {&Command{Name: "images swap", Summary: "create a node's swap image", Usage: "ssi images swap NODE|IMG --size SIZE [--images DIR] [--force]",
			Help: "Example:\n  ssi images swap ssi2 --size 64M"}, runImagesSwap},
	}
	family.Run = func(env *Env, args []string) error {
		return runSubcommand(env, family, subs, []string{"init", "root", "grow", "swap"}, args)
	}
	Register(family)
}

func runImagesInit(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	images := fs.String("images", "", "images directory (or give it as the argument; default "+provision.DefaultImagesDir+")")
	socket := socketFlag(fs)
	pos, err := parseInterspersed(env, cmd, fs, args)
	if err != nil {
		return err
	}
	dir := *images
	switch {
	case len(pos) > 1:
		return Usagef("expected one directory")
	case len(pos) == 1 && dir != "" && pos[0] != dir:
		return Usagef("the directory is given twice (%s and --images %s)", pos[0], dir)
	case len(pos) == 1:
		dir = pos[0]
	case dir == "":
		dir = provision.DefaultImagesDir
	}
	var nodes []provision.Node
	st, err := status(env, *socket, false)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: cannot read the node table (%s);\n  creating boot/ and configs/ only: node directories are made by 'ssi images swap' and 'ssi-addnode --xennode'\n", env.Prog, message(err))
	} else {
		for _, n := range st.Nodes {
			pn, err := toProvisionNode(n)
			if err != nil {
				return err
			}
			nodes = append(nodes, pn)
		}
	}
	if err := provision.InitLayout(dir, nodes); err != nil {
		return provisionError(err)
	}
	made := []string{"boot/", "configs/"}
	for _, n := range nodes {
		made = append(made, filepath.Base(provision.NodeDir(dir, n))+"/")
	}
	fmt.Fprintf(env.Stdout, "%s: %s\n", dir, strings.Join(made, " "))
	return nil
}

// initNode is the node that holds the root image: the init node.
func initNode(st *ssiv1.StatusResponse) (*ssiv1.Node, error) {
	for _, n := range st.Nodes {
		if n.InitNode {
			return n, nil
		}
	}
	return nil, fmt.Errorf("cluster %s has no init node in its node table; give the image's path instead of a directory", st.ClusterName)
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func runImagesRoot(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	sizeS := fs.String("size", "", "image size, e.g. 2G (required)")
	from := fs.String("from", "", "directory tree to copy into the image (default: an empty filesystem)")
	force := fs.Bool("force", false, "replace an existing image")
	socket := socketFlag(fs)
	pos, err := parseInterspersed(env, cmd, fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return Usagef("expected the images directory or the image's path")
	}
	size, err := parseSizeFlag("size", *sizeS)
	if err != nil {
		return err
	}
	if *from != "" && !isDir(*from) {
		return Usagef("--from %s is not a directory", *from)
	}
	path := pos[0]
	if isDir(path) {
		st, err := status(env, *socket, false)
		if err != nil {
			return fmt.Errorf("%s is a directory, and finding the init node's name needs the daemon: %w (or give the image's path)", path, err)
		}
		n, err := initNode(st)
		if err != nil {
			return err
		}
		pn, err := toProvisionNode(n)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(provision.NodeDir(path, pn), 0o755); err != nil {
			return fmt.Errorf("create node %d's directory: %w", pn.Num, err)
		}
		path = provision.RootImagePath(path, pn)
	}
	if err := provision.CreateRootImage(env.Ctx, path, size, *from, *force, env.Stderr); err != nil {
		return provisionError(err)
	}
	fmt.Fprintf(env.Stdout, "created root image %s (%s)\n", path, provision.FormatSize(size))
	return nil
}

func runImagesGrow(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	sizeS := fs.String("size", "", "the new size, e.g. 4G (or give it after the image)")
	pos, err := parseInterspersed(env, cmd, fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 2 && *sizeS == "":
		*sizeS = pos[1]
	case len(pos) != 1:
		return Usagef("expected the image and its new size")
	}
	size, err := parseSizeFlag("size", *sizeS)
	if err != nil {
		return err
	}
	if err := provision.GrowImage(env.Ctx, pos[0], size, env.Stderr); err != nil {
		return provisionError(err)
	}
	fmt.Fprintf(env.Stdout, "%s is now %s\n", pos[0], provision.FormatSize(size))
	return nil
}

// looksLikePath tells an image path from a node number or name.
func looksLikePath(s string) bool {
	return strings.ContainsRune(s, '/') || strings.HasSuffix(s, ".img")
}

func runImagesSwap(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	sizeS := fs.String("size", "64M", "swap size")
	images := fs.String("images", provision.DefaultImagesDir, "images directory")
	force := fs.Bool("force", false, "replace an existing image")
	socket := socketFlag(fs)
	pos, err := parseInterspersed(env, cmd, fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return Usagef("expected a node (number or name) or the image's path")
	}
	size, err := parseSizeFlag("size", *sizeS)
	if err != nil {
		return err
	}
	path := pos[0]
	if !looksLikePath(path) {
		st, err := status(env, *socket, false)
		if err != nil {
			return err
		}
		sel, err := resolveNodes(st, pos)
		if err != nil {
			return err
		}
		pn, err := toProvisionNode(sel[0])
		if err != nil {
			return err
		}
		if err := os.MkdirAll(provision.NodeDir(*images, pn), 0o755); err != nil {
			return fmt.Errorf("create node %d's directory: %w", pn.Num, err)
		}
		path = provision.SwapImagePath(*images, pn)
	}
	if err := provision.CreateSwapImage(env.Ctx, path, size, *force, env.Stderr); err != nil {
		return provisionError(err)
	}
	fmt.Fprintf(env.Stdout, "created swap image %s (%s)\n", path, provision.FormatSize(size))
	return nil
}
