package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Input the standard flag parsing would have changed silently is refused
// with exit 2, and nothing is registered: a node number cut to 32 bits or
// read as octal, a token lifetime of zero, below a second or negative, a
// node file that is a directory, has an endless line or gives a MAC twice.
func TestInputIsNeverSilentlyChanged(t *testing.T) {
	c := StartCluster(t, 1)
	before := c.MustCLI(1, "ssi", "clustertab", "--json")
	dir := t.TempDir()
	long := filepath.Join(dir, "long.txt")
	os.WriteFile(long, []byte("0a:00:00:00:66:01 "+c.IP(60)+" "+strings.Repeat("x", 2<<20)+"\n"), 0o644)
	dup := filepath.Join(dir, "dup.txt")
	os.WriteFile(dup, []byte("0a:00:00:00:66:01 "+c.IP(61)+"\n0a:00:00:00:66:01 "+c.IP(62)+"\n"), 0o644)
	add := []string{"--hwaddr", "0a:00:00:00:66:09", "--ipaddr", c.IP(69)}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append([]string{"--nodenum", "4294967396"}, add...), "not a node number"},
		{append([]string{"--nodenum", "030"}, add...), "not a node number"},
		{append([]string{"--nodenum", "-3"}, add...), "not a node number"},
		{append([]string{"--token-ttl", "0"}, add...), "at least 1s"},
		{append([]string{"--token-ttl", "500ms"}, add...), "at least 1s"},
		{append([]string{"--token-ttl", "-1h"}, add...), "at least 1s"},
		{[]string{"--from", dir}, "not a regular file"},
		{[]string{"--from", long}, "longer than"},
		{[]string{"--from", dup}, "given on line 1 already"},
	} {
		r := c.CLI(1, "ssi-addnode", tc.args...)
		if r.Code != 2 || !strings.Contains(r.Stderr, tc.want) {
			t.Errorf("ssi-addnode %s: want exit 2 and %q, got %v", strings.Join(tc.args, " "), tc.want, r)
		}
	}
	if r := c.CLI(1, "ssi", "token", "1", "--token-ttl", "-1h"); r.Code != 2 {
		t.Errorf("ssi token with a negative lifetime: %v", r)
	}
	if after := c.MustCLI(1, "ssi", "clustertab", "--json"); after != before {
		t.Errorf("the node table changed:\nbefore %s\nafter %s", before, after)
	}
}
