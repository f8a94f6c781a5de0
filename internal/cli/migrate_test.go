package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// Under a second nothing shows; after, a line per phase (stderr is not a
// terminal here), the transfer with its bytes.
func TestMigrateProgress(t *testing.T) {
	var errb bytes.Buffer
	p := newProgress(&Env{Ctx: context.Background(), Stderr: &errb})
	for _, m := range []*ssiv1.MigrateProgress{
		{Phase: "freeze"}, {Phase: "dump", ElapsedUs: 300_000},
		{Phase: "transfer", ElapsedUs: 900_000, Bytes: 1e6},
		{Phase: "transfer", ElapsedUs: 1_200_000, Bytes: 300e6},
		{Phase: "transfer", ElapsedUs: 1_500_000, Bytes: 400e6},
		{Phase: "restore", ElapsedUs: 2_000_000, Bytes: 500e6},
	} {
		p.show(m)
	}
	p.end()
	want := "migrate: transfer 300.0 MB, 1.2s\nmigrate: restore, 2.0s\n"
	if got := errb.String(); got != want {
		t.Errorf("progress printed %q, want %q", got, want)
	}
	errb.Reset()
	q := newProgress(&Env{Ctx: context.Background(), Stderr: &errb})
	q.show(&ssiv1.MigrateProgress{Phase: "dump", ElapsedUs: 500_000})
	q.end()
	if strings.TrimSpace(errb.String()) != "" {
		t.Errorf("a quick move printed %q", errb.String())
	}
}

// migrate --postcopy --precopy is a usage error, found before any daemon
// is asked (the socket given does not exist).
func TestMigrateCopyFlags(t *testing.T) {
	var out, errb bytes.Buffer
	env := &Env{Ctx: context.Background(), Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
	code := Run(env, []string{"migrate", "--postcopy", "--precopy", "--socket", t.TempDir() + "/none.sock", "2000001", "3"})
	if code != ExitUsage || !strings.Contains(errb.String(), "--postcopy and --precopy") {
		t.Errorf("exit %d, %q; want a usage error", code, errb.String())
	}
}

// A post-copy move says when its last page arrived; a pre-copy one adds
// nothing.
func TestPostCopyNote(t *testing.T) {
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	if got := postCopyNote(&ssiv1.MigratePhases{Postcopy: true, PagesUs: 1_500_000}, us); got != "; post-copy: every page there 1.5s after it ran again" {
		t.Errorf("post-copy: %q", got)
	}
	if got := postCopyNote(&ssiv1.MigratePhases{}, us); got != "" {
		t.Errorf("pre-copy: %q", got)
	}
}
