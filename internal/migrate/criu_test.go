package migrate

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseVersion(t *testing.T) {
	for _, c := range []struct {
		out     string
		want    Version
		str     string
		atLeast bool // 4.2
	}{
		{"Version: 4.2.1\n", Version{4, 2, 1}, "4.2.1", true},
		{"Version: 4.2\nGitID: v4.2-12-g0123abc\n", Version{4, 2, 0}, "4.2", true},
		{"Version: 3.17\n", Version{3, 17, 0}, "3.17", false},
		{"Version: 4.1.1\n", Version{4, 1, 1}, "4.1.1", false},
		{"Version: 5.0\n", Version{5, 0, 0}, "5.0", true},
		{"  Version:  4.10.2-rc1\n", Version{4, 10, 2}, "4.10.2", true},
		{"Warn: something\nVersion: 4.3\n", Version{4, 3, 0}, "4.3", true},
	} {
		v, err := ParseVersion(c.out)
		if err != nil || v != c.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", c.out, v, err, c.want)
			continue
		}
		if v.String() != c.str || v.AtLeast(MinMajor, MinMinor) != c.atLeast {
			t.Errorf("%q: String %q, AtLeast(4, 2) %v; want %q, %v", c.out, v.String(), v.AtLeast(4, 2), c.str, c.atLeast)
		}
	}
	for _, bad := range []string{"", "criu 4.2.1\n", "Version: 4\n", "Version: x.y\n", "Version: 4.2.1.7\n", "Version:\n"} {
		if v, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", bad, v)
		}
	}
}

// fakeCRIU writes an executable criu script in a new directory and returns
// its path.
func fakeCRIU(t *testing.T, dir, script string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "criu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFindCRIUOrder(t *testing.T) {
	tmp := t.TempDir()
	configured := fakeCRIU(t, filepath.Join(tmp, "configured"), "")
	env := fakeCRIU(t, filepath.Join(tmp, "env"), "")
	prefix := filepath.Join(tmp, "prefix")
	installed := fakeCRIU(t, filepath.Join(prefix, "bin"), "")
	inPath := fakeCRIU(t, filepath.Join(tmp, "path"), "")
	t.Setenv("SSI_CRIU", env)
	t.Setenv("SSI_CRIU_PREFIX", prefix)
	t.Setenv("PATH", filepath.Dir(inPath))

	check := func(configured, want string) {
		t.Helper()
		got, err := FindCRIU(configured)
		if err != nil || got != want {
			t.Fatalf("FindCRIU(%q) = %q, %v; want %q", configured, got, err, want)
		}
	}
	check(configured, configured)
	check("", env)
	t.Setenv("SSI_CRIU", "")
	check("", installed)
	os.Remove(installed)
	check("", inPath)
	os.Remove(inPath)
	_, err := FindCRIU("")
	if !errors.Is(err, ErrNoCRIU) || !strings.Contains(err.Error(), "scripts/criu.sh") {
		t.Fatalf("nothing to find: %v", err)
	}

	// A path that was given must work: it is not skipped for the next.
	fakeCRIU(t, filepath.Join(prefix, "bin"), "")
	notExec := filepath.Join(tmp, "plain")
	os.WriteFile(notExec, nil, 0o644)
	for _, bad := range []string{filepath.Join(tmp, "missing"), notExec, tmp} {
		if _, err := FindCRIU(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("FindCRIU(%q): %v; want an error naming it", bad, err)
		}
		t.Setenv("SSI_CRIU", bad)
		if _, err := FindCRIU(""); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "SSI_CRIU") {
			t.Errorf("SSI_CRIU=%q: %v; want an error naming it", bad, err)
		}
		t.Setenv("SSI_CRIU", "")
	}
}

func TestCRIUVersionAndCheckOfAFake(t *testing.T) {
	dir := t.TempDir()
	good := fakeCRIU(t, filepath.Join(dir, "good"), `case $1 in --version) echo "Version: 4.2.1"; echo "GitID: v4.2.1";; check) echo "Warn: harmless" >&2; echo "Looks good.";; esac`)
	v, err := CRIUVersion(context.Background(), good)
	if err != nil || v != (Version{4, 2, 1}) {
		t.Fatalf("CRIUVersion: %v, %v", v, err)
	}
	out, err := CRIUCheck(context.Background(), good)
	if err != nil || !strings.Contains(out, "Looks good.") || !strings.Contains(out, "harmless") {
		t.Fatalf("CRIUCheck: %q, %v", out, err)
	}

	bad := fakeCRIU(t, filepath.Join(dir, "bad"), `echo "Error (criu/cr-check.c:1): no way" >&2; exit 1`)
	out, err = CRIUCheck(context.Background(), bad)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(err.Error(), "criu check") || !strings.Contains(err.Error(), "no way") || !strings.Contains(out, "no way") {
		t.Fatalf("failing check: %q, %v", out, err)
	}
	if _, err := CRIUVersion(context.Background(), bad); !errors.As(err, &ee) {
		t.Fatalf("failing --version: %v", err)
	}

	slow := fakeCRIU(t, filepath.Join(dir, "slow"), `exec sleep 30`)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := CRIUCheck(ctx, slow); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow check: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("slow check took %v", d)
	}
}

// The real CRIU, as scripts/criu.sh installs it (deps.sh runs it, so CI
// has it): missing, it is a failure, not a skip, unless SSI_NO_CRIU=1.
func TestRealCRIU(t *testing.T) {
	if os.Getenv("SSI_NO_CRIU") == "1" {
		t.Skip("skipped: SSI_NO_CRIU=1 says this machine has no CRIU")
	}
	path, err := FindCRIU("")
	if err != nil {
		t.Fatalf("%v\n(run: sudo bash scripts/criu.sh, or set SSI_NO_CRIU=1 to skip this test)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := CRIUVersion(ctx, path)
	if err != nil {
		t.Fatalf("%v\n(reinstall with: sudo bash scripts/criu.sh)", err)
	}
	if !v.AtLeast(MinMajor, MinMinor) {
		t.Fatalf("%s is CRIU %v, older than %d.%d: run sudo bash scripts/criu.sh (it installs into %s, which FindCRIU prefers to PATH)",
			path, v, MinMajor, MinMinor, DefaultCRIUPrefix)
	}
	t.Logf("%s: CRIU %v", path, v)
	if os.Geteuid() != 0 {
		t.Skip("skipped: criu check needs root")
	}
	out, err := CRIUCheck(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Looks good") {
		t.Errorf("criu check printed %q, want \"Looks good.\"", out)
	}
}

func TestPipeMaxSize(t *testing.T) {
	n, err := PipeMaxSize()
	if err != nil || n < 4096 {
		t.Fatalf("PipeMaxSize() = %d, %v", n, err)
	}
}
