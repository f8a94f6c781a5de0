package rexec

import (
	"os"
	"slices"
	"testing"
	"time"
)

func TestReadProcSelf(t *testing.T) {
	p, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != os.Getpid() || p.PPID != os.Getppid() || p.UID != uint32(os.Getuid()) {
		t.Errorf("ReadProc(self) = pid %d ppid %d uid %d", p.PID, p.PPID, p.UID)
	}
	if p.State != "R" && p.State != "S" {
		t.Errorf("state %q of a running test", p.State)
	}
	if len(p.Cmdline) == 0 || p.Cmdline[0] != os.Args[0] || p.RSS == 0 || len(p.Comm) == 0 || len(p.Comm) > 15 {
		t.Errorf("ReadProc(self) = %+v", p)
	}
	if age := time.Since(p.Start); age < -time.Second || age > time.Hour {
		t.Errorf("start time %v is implausible", p.Start)
	}
	if _, err := ReadProc(1 << 30); err == nil {
		t.Error("ReadProc of a PID that cannot exist succeeded")
	}
}

func TestDescendants(t *testing.T) {
	// 1 ─ 10 ─ 11 ─ 12      20 (pgid 10, re-parented to 1)
	//        └ 13           30 (unrelated)
	tab := procTable{
		1:  {0, 1},
		10: {1, 10},
		11: {10, 10},
		12: {11, 12},
		13: {10, 13},
		20: {1, 10},
		30: {1, 30},
	}
	if got := tab.descendants(10, 0); !slices.Equal(got, []int{11, 12, 13}) {
		t.Errorf("descendants(10) = %v", got)
	}
	if got := tab.descendants(10, 10); !slices.Equal(got, []int{11, 12, 13, 20}) {
		t.Errorf("descendants(10) with its group = %v", got)
	}
	if got := tab.descendants(99, 0); len(got) != 0 {
		t.Errorf("descendants of a missing PID = %v", got)
	}
}
