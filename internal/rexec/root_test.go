package rexec

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// busyboxRoot makes a root directory with busybox (and the libraries it
// needs) as sh, cat, ls and pwd, and a file that exists only there.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox")
	}
	root := t.TempDir()
	copyFile := func(src, dst string) {
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(bb, filepath.Join(root, "bin", "busybox"))
	out, _ := exec.Command("ldd", bb).Output() // "not a dynamic executable": nothing to copy
	for _, l := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, "/") {
				copyFile(f, filepath.Join(root, f))
			}
		}
	}
	for _, name := range []string{"sh", "cat", "ls", "pwd"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "only-here"), []byte("inside the root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestRoot: a job with Root sees that tree as /: it finds its command in
// PATH there, enters Dir inside it, reads a file that exists only there,
// and does not see the node's root.
func TestRoot(t *testing.T) {
	needRoot(t)
	root := busyboxRoot(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "sh", "-c", `cat /only-here; pwd; ls /; if [ -e /usr ]; then echo "the node's root shows"; fi`)
			spec.Env = []string{"PATH=/bin"}
			spec.Root = root
			spec.Dir = "/sub"
			j := start(t, spec)
			if j.Root() != root {
				t.Errorf("Root() = %q, want %q", j.Root(), root)
			}
			c := collect(j)
			st := wait(t, j)
			c.done(t)
			out := c.out.String()
			if !strings.HasPrefix(out, "inside the root\n/sub\n") || !strings.Contains(out, "only-here\n") || strings.Contains(out, "node's root") || st.ExitCode() != 0 {
				t.Errorf("status %v, stdout %q, stderr %q; want the file, /sub and the root's listing", st, out, c.err.String())
			}
		})
	}
}

// TestRootNotFound: a command or a directory missing inside the root is
// reported as for any job (127; a start error), even when it exists on the
// node.
func TestRootNotFound(t *testing.T) {
	needRoot(t)
	root := busyboxRoot(t)
	spec := modes[3].spec(t, "true") // on the node (/usr/bin/true), not in the root
	spec.Env = []string{"PATH=/usr/bin:/bin"}
	spec.Root = root
	if _, err := Start(t.Context(), spec); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("a command missing in the root: %v, want command not found", err)
	}
	spec = modes[3].spec(t, "sh", "-c", "true")
	spec.Env = []string{"PATH=/bin"}
	spec.Root = root
	spec.Dir = "/usr"
	if _, err := Start(t.Context(), spec); err == nil || !strings.Contains(err.Error(), "working directory") {
		t.Errorf("a directory missing in the root: %v, want a working directory error", err)
	}
}
