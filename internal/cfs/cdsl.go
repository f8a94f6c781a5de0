package cfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
)

// A CDSL (context-dependent symbolic link) is a symlink whose target holds
// {nodenum} or {nodename}; the cluster filesystem's client puts in its own
// node's number or name when it reads the link. ssi mklocalfile keeps one
// copy per node beside the file:
//
//	NAME -> .NAME.cdsl/node{nodenum}
//	.NAME.cdsl/node1, .NAME.cdsl/node2, ...
const (
	cdslSuffix = ".cdsl"
	cdslNode   = "node{nodenum}"
)

// cdslDir is the directory holding the per-node copies of path.
func cdslDir(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+cdslSuffix)
}

func cdslTarget(path string) string {
	return "." + filepath.Base(path) + cdslSuffix + "/" + cdslNode
}

// IsCDSL says whether path is a CDSL made by MakeLocal: read through the
// cluster filesystem its target names this node's copy, read on the
// server's disk the {nodenum} form.
func IsCDSL(path string) bool {
	t, err := os.Readlink(path)
	if err != nil {
		return false
	}
	if t == cdslTarget(path) {
		return true
	}
	n, ok := strings.CutPrefix(t, "."+filepath.Base(path)+cdslSuffix+"/node")
	if !ok {
		return false
	}
	_, err = strconv.ParseUint(n, 10, 32)
	return err == nil
}

// MakeLocal turns path (a file or directory) into a CDSL with a copy for
// each node in nodes, each a copy of what path holds now. On an existing
// CDSL it adds the copies missing for nodes (made from the lowest node's),
// so a node added to the cluster later gets its own. It returns the nodes
// it made copies for.
func MakeLocal(path string, nodes []uint32) ([]uint32, error) {
	if len(nodes) == 0 {
		return nil, errors.New("no nodes to make copies for")
	}
	nodes = append([]uint32(nil), nodes...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i] < nodes[j] })
	dir := cdslDir(path)
	if IsCDSL(path) {
		src := ""
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("%s is a CDSL but its copies cannot be read: %w", path, err)
		}
		lowest := uint64(0)
		for _, e := range ents {
			if n, ok := strings.CutPrefix(e.Name(), "node"); ok {
				if v, err := strconv.ParseUint(n, 10, 32); err == nil && (lowest == 0 || v < lowest) {
					lowest, src = v, filepath.Join(dir, e.Name())
				}
			}
		}
		if src == "" {
			return nil, fmt.Errorf("%s is a CDSL without any copy in %s", path, dir)
		}
		var made []uint32
		for _, n := range nodes {
			dst := filepath.Join(dir, "node"+strconv.FormatUint(uint64(n), 10))
			if _, err := os.Lstat(dst); err == nil {
				continue
			}
			if err := copyTree(src, dst); err != nil {
				return made, err
			}
			made = append(made, n)
		}
		return made, nil
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() && !fi.IsDir() {
		return nil, fmt.Errorf("%s is a %s: only a file or a directory can become a CDSL", path, fi.Mode().Type())
	}
	if _, err := os.Lstat(dir); err == nil {
		return nil, fmt.Errorf("%s already exists: remove it or make %s global first", dir, path)
	}
	tmp := dir + ".new"
	_ = os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return nil, err
	}
	fail := func(err error) ([]uint32, error) {
		_ = os.RemoveAll(tmp)
		return nil, err
	}
	for _, n := range nodes {
		if err := copyTree(path, filepath.Join(tmp, "node"+strconv.FormatUint(uint64(n), 10))); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail(err)
	}
	link := path + ".cdsl-link"
	_ = os.Remove(link)
	if err := os.Symlink(cdslTarget(path), link); err != nil {
		return nil, err
	}
	if fi.IsDir() {
		// A symlink cannot replace a directory in one rename.
		old := path + ".cdsl-old"
		if err := os.Rename(path, old); err != nil {
			return nil, err
		}
		if err := os.Rename(link, path); err != nil {
			_ = os.Rename(old, path)
			return nil, err
		}
		return nodes, os.RemoveAll(old)
	}
	return nodes, os.Rename(link, path)
}

// MakeGlobal turns a CDSL back into one file or directory for every node:
// node from's copy.
func MakeGlobal(path string, from uint32) error {
	if !IsCDSL(path) {
		return fmt.Errorf("%s is not a CDSL made by ssi mklocalfile", path)
	}
	dir := cdslDir(path)
	src := filepath.Join(dir, "node"+strconv.FormatUint(uint64(from), 10))
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("node %d has no copy of %s: %w", from, path, err)
	}
	if fi.IsDir() {
		if err := os.Remove(path); err != nil {
			return err
		}
		if err := os.Rename(src, path); err != nil {
			return err
		}
	} else if err := os.Rename(src, path); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// copyTree copies a file or directory with its modes, owners, times and
// extended attributes (cp -a: coreutils knows every corner of it).
func copyTree(src, dst string) error {
	out, err := exec.Command("cp", "-a", "--", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w: %s", src, dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// OnMount says which cluster filesystem mount path is on ("" if none).
func OnMount(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	ms, err := mountinfo.Read()
	if err != nil {
		return ""
	}
	best := ""
	for _, mt := range ms {
		m := mt.Point
		if mt.FSType != "fuse.cfs" {
			continue
		}
		if (abs == m || strings.HasPrefix(abs, strings.TrimSuffix(m, "/")+"/")) && len(m) > len(best) {
			best = m
		}
	}
	return best
}
