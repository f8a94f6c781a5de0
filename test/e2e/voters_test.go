package e2e

import (
	"strings"
	"testing"
	"time"
)

// A voter that stays DOWN hands its Raft vote to an UP member, so the
// cluster survives losing voters one after another: with 3 voters and no
// replacement, losing 2 would stop every write.
func TestDownVoterIsReplaced(t *testing.T) {
	c := StartCluster(t, 4, "--voter-replace-after", "2s")
	ns, raw := c.Nodes(1)
	var leader, member int
	var voters []int
	for num, n := range ns {
		switch n.Role {
		case "leader":
			leader = int(num)
		case "voter":
			voters = append(voters, int(num))
		case "member":
			member = int(num)
		}
	}
	if leader == 0 || len(voters) != 2 || member == 0 {
		t.Fatalf("roles: %s", raw)
	}
	first := voters[0]
	c.Kill(first)
	c.WaitState(others(4, first), uint32(first), "DOWN", 10*time.Second)
	Eventually(t, 20*time.Second, func() string {
		ns, raw := c.Nodes(leader)
		if ns[uint32(member)].Role != "voter" || ns[uint32(first)].Role != "member" {
			return "vote not moved: " + raw
		}
		return ""
	})
	// Lose the other original voter too: the leader and the new voter are
	// still a majority of three.
	second := voters[1]
	c.Kill(second)
	c.WaitState([]int{leader, member}, uint32(second), "DOWN", 15*time.Second)
	out := c.MustCLI(member, "ssi-addnode", "--hwaddr", "0a:00:00:00:99:01", "--ipaddr", c.IP(30))
	if !strings.HasPrefix(out, "node 5 ") {
		t.Errorf("write after losing two original voters: %q", out)
	}
	ev := c.MustCLI(leader, "cluster", "--events")
	if !strings.Contains(ev, "takes the Raft vote of node") {
		t.Errorf("the replacement is not in the agreed events:\n%s", ev)
	}
}
