package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func runDoctor(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &Env{Ctx: context.Background(), Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
	code := Run(env, append([]string{"ssi", "doctor"}, args...))
	return code, out.String() + errb.String()
}

// ssi doctor finds the CRIU scripts/criu.sh installs (deps.sh runs it, so
// CI has it) and says it is new enough; it exits 1 exactly when a check
// FAILs.
func TestDoctor(t *testing.T) {
	if os.Getenv("SSI_NO_CRIU") == "1" {
		t.Skip("skipped: SSI_NO_CRIU=1 says this machine has no CRIU")
	}
	code, out := runDoctor(t)
	t.Logf("ssi doctor (exit %d):\n%s", code, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var names []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Fatalf("line %q", l)
		}
		names = append(names, f[1])
	}
	if got := strings.Join(names, " "); got != "criu criu pipe-max-size post-copy soft-dirty freezer root" {
		t.Errorf("checks: %s", got)
	}
	m := regexp.MustCompile(`^ok +criu +\S+: CRIU (\d+)\.(\d+)`).FindStringSubmatch(lines[0])
	if m == nil {
		t.Fatalf("criu is not ok: %q\n(run: sudo bash scripts/criu.sh, or set SSI_NO_CRIU=1 to skip this test)", lines[0])
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 4 || major == 4 && minor < 2 {
		t.Errorf("criu line says %d.%d, want >= 4.2", major, minor)
	}
	if os.Geteuid() == 0 && !strings.HasPrefix(lines[1], "ok") {
		t.Errorf("criu check as root: %q", lines[1])
	}
	if failed := strings.Contains(out, "\nFAIL") || strings.HasPrefix(out, "FAIL"); failed != (code == ExitFailure) || code != ExitOK && code != ExitFailure {
		t.Errorf("exit %d with a FAIL line: %v", code, failed)
	}

	// --json: the same checks.
	code2, js := runDoctor(t, "--json")
	var checks []doctorCheck
	if err := json.Unmarshal([]byte(js), &checks); err != nil || len(checks) != 7 || code2 != code {
		t.Fatalf("--json (exit %d): %v\n%s", code2, err, js)
	}
	if checks[0].Check != "criu" || checks[0].Status != "ok" {
		t.Errorf("--json criu: %+v", checks[0])
	}
}

// A criu that is missing or too old FAILs, and doctor exits 1.
func TestDoctorBadCRIU(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "criu")
	os.WriteFile(old, []byte("#!/bin/sh\necho 'Version: 3.17'\n"), 0o755)
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "missing"},
		{old, "CRIU 3.17, older than 4.2"},
	} {
		code, out := runDoctor(t, "--criu", c.path)
		first, _, _ := strings.Cut(out, "\n")
		if code != ExitFailure || !strings.HasPrefix(first, "FAIL") || !strings.Contains(first, c.want) {
			t.Errorf("--criu %s: exit %d\n%s", c.path, code, out)
		}
	}
	if code, out := runDoctor(t, "extra"); code != ExitUsage {
		t.Errorf("an argument: exit %d %s", code, out)
	}
}
