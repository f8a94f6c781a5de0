package state

import (
	"errors"
	"testing"
)

// The record is compared and swapped: a stale proposer is refused and
// changes nothing; bad records are refused; without a record the server is
// the proposer's default.
func TestSetCFS(t *testing.T) {
	c := &Cluster{Nodes: map[uint32]*Node{1: {Num: 1}, 2: {Num: 2}, 3: {Num: 3}}}
	if got := c.CFSServer(1); got != 1 {
		t.Fatalf("server without a record: %d", got)
	}
	steps := []struct {
		cmd  SetCFS
		code Code // "" : applied
		want CFS
	}{
		{SetCFS{CFS: CFS{Server: 1, Replica: 2}, Expect: &CFS{Server: 1}}, "", CFS{Server: 1, Replica: 2}},
		{SetCFS{CFS: CFS{Server: 1, Replica: 2, Synced: true}, Expect: &CFS{Server: 1, Replica: 2}}, "", CFS{Server: 1, Replica: 2, Synced: true}},
		// A stale expectation (the server thought it was not yet synced).
		{SetCFS{CFS: CFS{Server: 1, Replica: 3}, Expect: &CFS{Server: 1, Replica: 2}}, CodeConflict, CFS{Server: 1, Replica: 2, Synced: true}},
		{SetCFS{CFS: CFS{Server: 1, Replica: 1}}, CodeInvalid, CFS{Server: 1, Replica: 2, Synced: true}},
		{SetCFS{CFS: CFS{Server: 1, Replica: 9}}, CodeNotFound, CFS{Server: 1, Replica: 2, Synced: true}},
		{SetCFS{CFS: CFS{Server: 9}}, CodeNotFound, CFS{Server: 1, Replica: 2, Synced: true}},
		{SetCFS{CFS: CFS{Server: 0}}, CodeInvalid, CFS{Server: 1, Replica: 2, Synced: true}},
		{SetCFS{CFS: CFS{Server: 1, Synced: true}}, CodeInvalid, CFS{Server: 1, Replica: 2, Synced: true}},
		// The failover: the replica serves, the old server is to be synced.
		{SetCFS{CFS: CFS{Server: 2, Replica: 1, Failovers: 1}, Expect: &CFS{Server: 1, Replica: 2, Synced: true}}, "", CFS{Server: 2, Replica: 1, Failovers: 1}},
		// The count never goes down.
		{SetCFS{CFS: CFS{Server: 2}}, "", CFS{Server: 2, Failovers: 1}},
	}
	for i, s := range steps {
		err := applySetCFS(c, s.cmd)
		var e *Error
		switch {
		case s.code == "" && err != nil:
			t.Errorf("step %d %+v: %v", i, s.cmd, err)
		case s.code != "" && (!errors.As(err, &e) || e.Code != s.code):
			t.Errorf("step %d %+v: %v, want a %s refusal", i, s.cmd, err, s.code)
		}
		if got := c.CFSRecord(1); got != s.want {
			t.Errorf("step %d: record %+v, want %+v", i, got, s.want)
		}
	}
	cp := c.Clone()
	cp.CFS.Server = 3
	if c.CFS.Server != 2 {
		t.Error("Clone shares the record")
	}
}

// The job-root setting goes through the log.
func TestSetJobRoot(t *testing.T) {
	a := newApplier(t)
	if a.f.Cluster().JobRoot {
		t.Fatal("jobs get the cluster root by default")
	}
	a.must(CmdSetJobRoot, SetJobRoot{On: true})
	if !a.f.Cluster().JobRoot {
		t.Fatal("SetJobRoot on did not take")
	}
	if c := a.f.Cluster().Clone(); !c.JobRoot {
		t.Error("Clone lost the setting")
	}
	a.must(CmdSetJobRoot, SetJobRoot{On: false})
	if a.f.Cluster().JobRoot {
		t.Fatal("SetJobRoot off did not take")
	}
}
