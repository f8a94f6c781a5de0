package cfs

import (
	"testing"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"golang.org/x/sys/unix"
)

// Two lists name the requests that change the tree: changes (replica.go,
// what the server copies to its replica) and changed (metacache.go, whose
// cached attributes and listings a request makes stale on the client).
// They must agree but for the differences written here, so that an
// operation added to one is not forgotten in the other.
func TestTheTwoListsOfChangesAgree(t *testing.T) {
	onlyReplicated := map[ssiv1.FsOp]string{
		ssiv1.FsOp_FS_OP_FSYNC: "makes data durable on the replica; no attribute moves",
	}
	for v := range ssiv1.FsOp_name {
		op := ssiv1.FsOp(v)
		if op == ssiv1.FsOp_FS_OP_RELEASE {
			continue // replicated only if its OPEN was (a property of the handle), changes nothing cached
		}
		r := &ssiv1.FsRequest{Op: op, Parent: 1, Ino: 2, Flags: unix.O_WRONLY}
		replicated, stale := changes(nil, r), len(changed(r)) > 0
		if why, ok := onlyReplicated[op]; ok {
			if !replicated || stale {
				t.Errorf("%v: replicated %v, stale %v; want replicated only (%s)", op, replicated, stale, why)
			}
			continue
		}
		if replicated != stale {
			t.Errorf("%v: copied to the replica: %v, but makes the client's cache stale: %v", op, replicated, stale)
		}
	}
}
