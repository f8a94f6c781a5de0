package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

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
