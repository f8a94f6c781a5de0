package placement

import (
	"testing"
	"time"
)

func TestPlacementsCountRecentJobsOnly(t *testing.T) {
	var p placements
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	if p.recent(1, t0) != 0 {
		t.Fatal("empty placements count something")
	}
	p.add(1, t0)
	p.add(1, t0.Add(time.Second))
	p.add(2, t0)
	if got := p.recent(1, t0.Add(2*time.Second)); got != 2 {
		t.Errorf("node 1: %v recent placements, want 2", got)
	}
	if got := p.recent(1, t0.Add(Memory+500*time.Millisecond)); got != 1 {
		t.Errorf("node 1 after the first expired: %v, want 1", got)
	}
	if got := p.recent(2, t0.Add(Memory)); got != 0 {
		t.Errorf("node 2 after expiry: %v", got)
	}
}
