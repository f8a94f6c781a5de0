package migrate

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// kdatFile is where CRIU keeps what it probed of the kernel (criu.kdat
// under its build's run directory): every CRIU run that finds no valid
// file there probes again, ~50 ms of each dump and each restore on this
// machine kind, on the frozen path.
const kdatFile = "/run/criu.kdat"

// CRIU writes the file only where /run is a tmpfs (so that it is gone
// after a reboot, when the kernel may have changed), as on a normal boot.
// Where /run is a directory of the root filesystem (containers, machines
// without an init that mounts it), CRIU never keeps it. primeKdat then
// has CRIU probe once with a tmpfs of its own mounted on /run, in a mount
// namespace of its own (unshare(1)), and puts the result where every
// later CRIU run reads it; CRIU checks only the file's magic when it loads
// it. Each daemon's start does it again, so a kernel changed by a reboot
// is probed afresh before the first move.
func primeKdat(ctx context.Context, criu string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(kdatFile), &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", filepath.Dir(kdatFile), err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		return false, nil // CRIU keeps its own cache there
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	script := `mount -t tmpfs -o size=1m,mode=0755 ssi-criu-kdat /run && "$0" check >/dev/null 2>&1; exec cat ` + kdatFile
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, criu)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("probing the kernel with %s check under a tmpfs /run (unshare, from util-linux): %w: %s", criu, err, bytes.TrimSpace(errb.Bytes()))
	}
	if out.Len() == 0 || out.Len() > 1<<20 {
		return false, fmt.Errorf("%s check left a kdat file of %d bytes", criu, out.Len())
	}
	tmp := kdatFile + ".ssi-" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, out.Bytes(), 0o600); err != nil {
		return false, fmt.Errorf("writing CRIU's kernel cache: %w", err)
	}
	if err := os.Rename(tmp, kdatFile); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("writing CRIU's kernel cache: %w", err)
	}
	return true, nil
}

// Run primes CRIU's kernel cache once at the daemon's start (primeKdat),
// in the background and off any move's frozen path; a node without CRIU
// or not root does nothing.
func (m *Migrator) Run(ctx context.Context) {
	if os.Geteuid() != 0 {
		return
	}
	p, err := FindCRIU(m.cfg.CRIU)
	if err != nil {
		return // ssi doctor says why; moves are refused with it
	}
	wrote, err := primeKdat(ctx, p)
	switch {
	case err != nil:
		m.log.Warn("CRIU's kernel cache could not be prepared: each dump and restore probes the kernel again (~50 ms more frozen)", "err", err)
	case wrote:
		m.log.Info("CRIU's kernel cache prepared (/run is not a tmpfs, where CRIU would keep it itself)", "file", kdatFile)
	}
}
