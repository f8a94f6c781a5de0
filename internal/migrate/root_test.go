package migrate

import (
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// TestCheckRoot: a job whose / is the cluster root is received only where
// this node's jobs get the cluster root at the same path.
func TestCheckRoot(t *testing.T) {
	at := func(root string, err error) *Migrator {
		return New(Config{Self: 3, JobRoot: func() (string, error) { return root, err }})
	}
	cases := []struct {
		name string
		m    *Migrator
		root string
		want string // "" for accepted
	}{
		{"plain job, plain node", New(Config{Self: 3}), "", ""},
		{"plain job, job-root node", at("/cluster", nil), "", ""},
		{"same path", at("/cluster", nil), "/cluster", ""},
		{"other path", at("/d/mnt/node3", nil), "/d/mnt/node2", "mounts it at /d/mnt/node3"},
		{"no job root here", at("", nil), "/cluster", "in its own root"},
		{"not ready here", at("", errors.New("not mounted")), "/cluster", "cannot give it now"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.m.checkRoot(&ssiv1.MigrateHeader{Cpid: 2000001, Root: c.root})
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), c.want)):
				t.Errorf("got %v, want a FailedPrecondition saying %q", err, c.want)
			}
		})
	}
}
