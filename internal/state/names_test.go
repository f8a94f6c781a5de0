package state

import (
	"regexp"
	"testing"
)

// The hand-written name checks accept exactly what these expressions do
// (the rules as they were written before, kept here as the reference).
var (
	nodeNameRE    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)
	ifaceNameRE   = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)
)

func checkNames(t *testing.T, s string) {
	t.Helper()
	if got, want := ValidNodeName(s) == nil, nodeNameRE.MatchString(s); got != want {
		t.Errorf("ValidNodeName(%q) accepts: %v, the rule: %v", s, got, want)
	}
	if got, want := ValidClusterName(s) == nil, clusterNameRE.MatchString(s); got != want {
		t.Errorf("ValidClusterName(%q) accepts: %v, the rule: %v", s, got, want)
	}
	if got, want := ifaceNameOK(s), ifaceNameRE.MatchString(s); got != want {
		t.Errorf("ifaceNameOK(%q) = %v, the rule: %v", s, got, want)
	}
}

func TestNameRules(t *testing.T) {
	long := "a123456789b123456789c123456789d123456789e123456789f123456789abc" // 63
	for _, s := range []string{"", "a", "-", "a-", "-a", "a-b", "a.b", "a_b", ".a", "a.", "node1", "eth0", "br-lan.10", "a:b", "a@b",
		long, long + "d", "ab" + long[2:], "é", "a b", "a\n", "0123456789abcdef", "0123456789abcde"} {
		checkNames(t, s)
	}
}

func FuzzNameRules(f *testing.F) {
	for _, s := range []string{"a", "a-b", "a.b_c", "eth0:1", "-x", "x."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkNames(t, s) })
}
