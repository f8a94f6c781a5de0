package membership

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
)

func TestJoinGuard(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tok, _ := pki.NewToken(strings.Repeat("0f", 32))
	c := &state.Cluster{Name: "secret-name", Nodes: map[uint32]*state.Node{
		2: {Num: 2, HWAddr: "0a:00:00:00:11:02", TokenHash: tok.Hash(), TokenExpires: now.Add(time.Hour)},
		3: {Num: 3, HWAddr: "0a:00:00:00:11:03", TokenHash: tok.Hash(), TokenExpires: now.Add(-time.Second)},
	}}
	var g joinGuard
	if err := g.check(c, "10.0.0.9", "0a:00:00:00:11:02", tok.Secret, now); err != nil {
		t.Fatalf("a valid token was refused: %v", err)
	}
	// Wrong secret, unknown MAC and an expired token all get the same
	// answer, which names neither the cluster nor the node.
	var msgs []string
	for _, tc := range []struct{ mac, secret string }{
		{"0a:00:00:00:11:02", "00000000000000000000000000000000"},
		{"0a:00:00:00:11:99", tok.Secret},
		{"0a:00:00:00:11:03", tok.Secret},
	} {
		err := g.check(c, "10.0.0.7", tc.mac, tc.secret, now)
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("%s: %v, want PermissionDenied", tc.mac, err)
		}
		msgs = append(msgs, err.Error())
	}
	if msgs[0] != msgs[1] || msgs[1] != msgs[2] {
		t.Errorf("refusals differ, telling registered MACs apart: %q", msgs)
	}
	// The source has 5 failures in a burst: 3 used, 2 left, then blocked.
	for i := 0; i < 2; i++ {
		_ = g.check(c, "10.0.0.7", "0a:00:00:00:11:7"+string(rune('0'+i)), "x", now)
	}
	if err := g.check(c, "10.0.0.7", "0a:00:00:00:11:02", tok.Secret, now); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("after 5 failures the source is not limited: %v", err)
	}
	// Another source is not; and the limit refills.
	if err := g.check(c, "10.0.0.8", "0a:00:00:00:11:02", tok.Secret, now); err != nil {
		t.Fatalf("another source was limited: %v", err)
	}
	if err := g.check(c, "10.0.0.7", "0a:00:00:00:11:02", tok.Secret, now.Add(joinFailEvery)); err != nil {
		t.Fatalf("the limit did not refill after %v: %v", joinFailEvery, err)
	}
	// The limiters' memory is bounded.
	for i := 0; i < 3*maxJoinLimiters; i++ {
		g.failed(string(rune(i)), now.Add(time.Duration(i)))
	}
	if n := len(g.lims); n > maxJoinLimiters {
		t.Errorf("%d limiters kept, want at most %d", n, maxJoinLimiters)
	}
}
