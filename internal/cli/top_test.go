package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

func TestTopRender(t *testing.T) {
	up, down := ssiv1.NodeState_NODE_STATE_UP, ssiv1.NodeState_NODE_STATE_DOWN
	f := &topFrame{
		at: time.Date(2026, 12, 1, 16, 4, 5, 0, time.UTC),
		status: &ssiv1.StatusResponse{ClusterName: "demo", LocalNum: 1, LeaderNum: 2, Nodes: []*ssiv1.Node{
			{Num: 3, Name: "demo3", State: down, Role: ssiv1.NodeRole_NODE_ROLE_MEMBER},
			{Num: 1, Name: "demo1", State: up, Role: ssiv1.NodeRole_NODE_ROLE_VOTER},
			{Num: 2, Name: "demo2", State: up, Role: ssiv1.NodeRole_NODE_ROLE_LEADER},
		}},
		loads: map[uint32]*ssiv1.NodeLoad{1: {Num: 1, Load: 0.5, CpuBusy: 0.5, RunQueue: 1, Ncpu: 2, MemFree: 3 << 30}, 3: {Num: 3, Load: 9}},
		procs: []*ssiv1.Proc{
			{Cpid: 1000001, Node: 1, Pid: 10, User: "ann", State: "S", Cpu: 0.1, Cmd: "sleep 100"},
			{Cpid: 2000002, Node: 2, Pid: 20, User: "bob", State: "R", Cpu: 99, Rss: 2 << 20, CpuTimeMs: 61_500, Cmd: "burn"},
			{Cpid: 1000003, Node: 1, Pid: 30, User: "ann", State: "X", Cmd: "true"},
		},
	}
	lines := f.render(0, 0, 2*time.Second, true)
	out := strings.Join(lines, "\n")
	for _, want := range []string{
		"ssi top - 16:04:05  cluster demo  via node 1  leader 2  every 2s  (q quits)",
		"Nodes: 3 total, 2 up, 1 down",
		"Processes: 3, 2 running",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	// Nodes in order; a DOWN node shows no load even if one is known.
	var nodeRows, procRows []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 2 && (f[1] == "demo1" || f[1] == "demo2" || f[1] == "demo3") {
			nodeRows = append(nodeRows, l)
		}
		if strings.HasPrefix(l, "1000") || strings.HasPrefix(l, "2000") {
			procRows = append(procRows, l)
		}
	}
	if len(nodeRows) != 3 || !strings.Contains(nodeRows[0], "demo1") || !strings.Contains(nodeRows[2], "demo3") {
		t.Fatalf("node rows %q", nodeRows)
	}
	if !strings.Contains(nodeRows[0], "0.50") || !strings.Contains(nodeRows[0], "3.0G") || strings.Contains(nodeRows[2], "9.00") {
		t.Errorf("loads: %q", nodeRows)
	}
	if len(procRows) != 3 || !strings.HasPrefix(procRows[0], "2000002") || !strings.Contains(procRows[0], "1:01.50") || !strings.Contains(procRows[0], "2.0M") {
		t.Fatalf("busiest first: %q", procRows)
	}
	// A small terminal: cut to its size.
	small := f.render(30, 8, time.Second, true)
	if len(small) != 8 {
		t.Fatalf("%d lines for an 8-line terminal", len(small))
	}
	for _, l := range small {
		if len([]rune(l)) > 30 {
			t.Fatalf("line wider than 30: %q", l)
		}
	}
}
