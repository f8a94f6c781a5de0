package rexec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A root daemon resolves a user's command as that user (issue 10): a file
// in a directory the user cannot search is "not executable" whether it
// exists or not (as the user's shell says: permission denied, 126), so a
// user cannot learn which of root's files exist; a command the user may
// run still runs.
func TestCommandIsResolvedAsTheCaller(t *testing.T) {
	needRoot(t)
	private := filepath.Join(t.TempDir(), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(private, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(private), 0o755)
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			for _, argv0 := range []string{script, filepath.Join(private, "nonexistent")} {
				spec := m.spec(t, argv0)
				spec.UID, spec.GID, spec.Groups = 65534, 65534, []uint32{65534}
				_, err := Start(context.Background(), spec)
				if !errors.Is(err, ErrNotExecutable) || !strings.Contains(err.Error(), "permission denied") {
					t.Errorf("as nobody, Start(%s) = %v, want ErrNotExecutable (permission denied)", argv0, err)
				}
			}
			// Root still finds and runs it.
			spec := m.spec(t, script)
			if st, out, _ := run(t, spec); st.ExitCode() != 0 || out != "ran\n" {
				t.Errorf("as root: %q (%v)", out, st)
			}
			// And the caller's own commands run as before.
			spec = m.spec(t, "id", "-u")
			spec.UID, spec.GID, spec.Groups = 65534, 65534, []uint32{65534}
			if st, out, _ := run(t, spec); st.ExitCode() != 0 || out != "65534\n" {
				t.Errorf("as nobody, id -u: %q (%v)", out, st)
			}
		})
	}
}

// A job's terminal belongs to the job's user (mode 0620), as after a
// login: before, a root daemon's pty stayed root's with mode 0600.
func TestTTYBelongsToTheCaller(t *testing.T) {
	needRoot(t)
	for _, m := range withPool(modes[:2]) {
		t.Run(m.name, func(t *testing.T) {
			spec := m.spec(t, "sh", "-c", `stat -L -c '%u %a' /proc/self/fd/0; echo written > "$(tty)" && echo ok`)
			spec.UID, spec.GID, spec.Groups = 65534, 65534, []uint32{65534}
			spec.TTY = true
			st, out, _ := run(t, spec)
			out = strings.ReplaceAll(out, "\r", "")
			if st.ExitCode() != 0 || !strings.HasPrefix(out, "65534 620\n") || !strings.Contains(out, "ok\n") {
				t.Errorf("the job's terminal: %q (%v), want it owned by 65534, mode 620, writable", out, st)
			}
		})
	}
}
