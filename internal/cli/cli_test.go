package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every command explains itself with an example, through both `ssi help X`
// and `X -h`.
func TestEveryCommandHasHelpWithAnExample(t *testing.T) {
	for name, c := range commands {
		if c.Hidden || name != c.Name {
			continue
		}
		if !strings.Contains(c.Help, "Example") {
			t.Errorf("%s: help has no example", name)
		}
		var out bytes.Buffer
		env := &Env{Stdout: &out, Stderr: &out, Stdin: strings.NewReader("")}
		if code := Run(env, []string{"ssi", name, "-h"}); code != 0 {
			t.Errorf("%s -h exited %d: %s", name, code, out.String())
		}
		if !strings.Contains(out.String(), "usage: ") || !strings.Contains(out.String(), "Example") {
			t.Errorf("%s -h printed:\n%s", name, out.String())
		}
	}
}

func TestUnknownCommandAndNoArguments(t *testing.T) {
	var out, errb bytes.Buffer
	env := &Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
	if code := Run(env, []string{"ssi", "nope"}); code != ExitUsage || !strings.Contains(errb.String(), "unknown command") {
		t.Errorf("unknown command: %d %q", code, errb.String())
	}
	if code := Run(env, []string{"ssi"}); code != ExitUsage || !strings.Contains(out.String(), "commands:") {
		t.Errorf("no arguments: %d", code)
	}
	// Symlink names dispatch on argv[0].
	out.Reset()
	if code := Run(env, []string{"/usr/local/bin/clusternode_getstate", "-h"}); code != 0 || !strings.Contains(out.String(), "clusternode_getstate N") {
		t.Errorf("argv[0] dispatch: %d %q", code, out.String())
	}
}

func TestInstallLinks(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	env := &Env{Stdout: &out, Stderr: &out, Stdin: strings.NewReader("")}
	if code := Run(env, []string{"ssi", "install-links", dir}); code != 0 {
		t.Fatalf("install-links: %s", out.String())
	}
	for _, name := range []string{"cluster", "clusternode_num", "clusternode_shutdown", "clustername", "clusternode_getstate",
		"ssi-addnode", "onnode", "onall", "where_pid", "loads", "fastnode"} {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s not linked: %v", name, err)
		}
	}
	// A regular file in the way is not replaced.
	os.Remove(filepath.Join(dir, "cluster"))
	os.WriteFile(filepath.Join(dir, "cluster"), []byte("mine"), 0o644)
	if code := Run(env, []string{"ssi", "install-links", dir}); code == 0 {
		t.Errorf("install-links replaced a regular file")
	}
}

func FuzzReadNodeFile(f *testing.F) {
	f.Add("0a:00:00:00:11:d2 192.168.64.142 ssi2\n# comment\n\n0a:00:00:00:11:d3 192.168.64.143\n")
	f.Add("garbage\n")
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "nodes")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Skip()
		}
		specs, err := readNodeFile(p, false)
		if err != nil {
			return
		}
		for _, s := range specs {
			if s.Hwaddr == "" || s.Ipaddr == "" {
				t.Fatalf("accepted an entry without addresses: %+v", s)
			}
		}
	})
}
