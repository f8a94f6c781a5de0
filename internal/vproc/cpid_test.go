package vproc

import (
	"errors"
	"math"
	"sync"
	"testing"
)

func TestMakeSplit(t *testing.T) {
	for _, tc := range []struct {
		node int
		seq  uint64
		str  string
	}{
		{1, 1, "1.1"},
		{3, 1042, "3.1042"},
		{4096, 7, "4096.7"},
		{MaxNode, MaxSeq, "65535.140737488355327"},
	} {
		c, err := Make(tc.node, tc.seq)
		if err != nil {
			t.Fatalf("Make(%d, %d): %v", tc.node, tc.seq, err)
		}
		if c <= 0 || !c.Valid() {
			t.Errorf("Make(%d, %d) = %d, not a valid positive CPID", tc.node, tc.seq, c)
		}
		if n, s := Split(c); n != tc.node || s != tc.seq {
			t.Errorf("Split(Make(%d, %d)) = %d, %d", tc.node, tc.seq, n, s)
		}
		if c.String() != tc.str {
			t.Errorf("String() = %q, want %q", c.String(), tc.str)
		}
		if c.Node() != tc.node {
			t.Errorf("Node() = %d, want %d", c.Node(), tc.node)
		}
	}
	for _, bad := range []struct {
		node int
		seq  uint64
	}{{0, 1}, {-1, 1}, {MaxNode + 1, 1}, {1, 0}, {1, MaxSeq + 1}} {
		if c, err := Make(bad.node, bad.seq); !errors.Is(err, ErrInvalidCPID) {
			t.Errorf("Make(%d, %d) = %v, %v; want ErrInvalidCPID", bad.node, bad.seq, c, err)
		}
	}
}

func TestNoCollisionsAcrossNodes(t *testing.T) {
	// Neighbouring nodes at the edges of the sequence space stay distinct.
	seen := map[CPID][2]uint64{}
	for _, node := range []int{1, 2, 4095, 4096, MaxNode} {
		for _, seq := range []uint64{1, 2, MaxSeq - 1, MaxSeq} {
			c, err := Make(node, seq)
			if err != nil {
				t.Fatal(err)
			}
			if prev, dup := seen[c]; dup {
				t.Fatalf("Make(%d, %d) = Make(%d, %d) = %d", node, seq, prev[0], prev[1], c)
			}
			seen[c] = [2]uint64{uint64(node), seq}
		}
	}
}

func TestParseCPID(t *testing.T) {
	c, _ := Make(3, 1042)
	for _, s := range []string{"3.1042", " 3.1042\n", "422212465067026"} {
		got, err := ParseCPID(s)
		if err != nil || got != c {
			t.Errorf("ParseCPID(%q) = %v, %v; want %v", s, got, err, c)
		}
	}
	for _, s := range []string{"", "3", "0", "-1", "0.5", "3.0", "3.", ".5", "65536.1", "1.140737488355328",
		"+3.5", "3.-5", "3.5.1", "a.b", "1e5", "9223372036854775808", "140737488355327", "3 .5"} {
		if got, err := ParseCPID(s); !errors.Is(err, ErrInvalidCPID) {
			t.Errorf("ParseCPID(%q) = %v, %v; want ErrInvalidCPID", s, got, err)
		}
	}
}

func TestStringOfInvalid(t *testing.T) {
	if s := CPID(0).String(); s != "-" {
		t.Errorf("CPID(0) = %q", s)
	}
	if s := CPID(-5).String(); s != "invalid(-5)" {
		t.Errorf("CPID(-5) = %q", s)
	}
}

func TestAllocator(t *testing.T) {
	a, err := NewAllocator(7, 41)
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Next()
	if err != nil {
		t.Fatal(err)
	}
	if n, s := Split(c); n != 7 || s != 42 {
		t.Errorf("first CPID after 41 is %d.%d, want 7.42", n, s)
	}
	if a.Last() != 42 || a.Node() != 7 {
		t.Errorf("Last() = %d, Node() = %d", a.Last(), a.Node())
	}

	// Concurrent use issues distinct CPIDs.
	var (
		mu   sync.Mutex
		seen = map[CPID]bool{}
		wg   sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c, err := a.Next()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[c] {
					t.Errorf("CPID %v issued twice", c)
				}
				seen[c] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if a.Last() != 42+8000 {
		t.Errorf("Last() = %d after 8001 CPIDs from 41", a.Last())
	}

	// A restarted node continues after what it persisted.
	b, _ := NewAllocator(7, a.Last())
	if c2, _ := b.Next(); c2 <= c || seen[c2] {
		t.Errorf("restarted allocator reissued %v", c2)
	}

	end, _ := NewAllocator(1, MaxSeq-1)
	if _, err := end.Next(); err != nil {
		t.Errorf("last sequence: %v", err)
	}
	if _, err := end.Next(); !errors.Is(err, ErrExhausted) {
		t.Errorf("past the last sequence: %v, want ErrExhausted", err)
	}
	for _, bad := range []struct {
		node int
		last uint64
	}{{0, 0}, {MaxNode + 1, 0}, {1, MaxSeq + 1}} {
		if _, err := NewAllocator(bad.node, bad.last); !errors.Is(err, ErrInvalidCPID) {
			t.Errorf("NewAllocator(%d, %d): %v, want ErrInvalidCPID", bad.node, bad.last, err)
		}
	}
}

func FuzzSplit(f *testing.F) {
	for _, n := range []int64{0, 1, -1, 1 << 47, 1<<47 | 1, math.MaxInt64, math.MinInt64} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		c := CPID(n)
		node, seq := Split(c)
		if !c.Valid() {
			if n > 0 && node >= 1 && seq >= 1 {
				t.Fatalf("%d splits into node %d seq %d but is not Valid", n, node, seq)
			}
			return
		}
		back, err := Make(node, seq)
		if err != nil || back != c {
			t.Fatalf("Make(Split(%d)) = %d, %v", n, back, err)
		}
		parsed, err := ParseCPID(c.String())
		if err != nil || parsed != c {
			t.Fatalf("ParseCPID(%q) = %d, %v; want %d", c.String(), parsed, err, n)
		}
	})
}

func FuzzParseCPID(f *testing.F) {
	for _, s := range []string{"3.1042", "422212465067026", "65535.140737488355327", "0.0", "-1", " 1.1 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCPID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCPID) {
				t.Fatalf("ParseCPID(%q): error %v does not wrap ErrInvalidCPID", s, err)
			}
			return
		}
		if !c.Valid() {
			t.Fatalf("ParseCPID(%q) = %d, which is not Valid", s, c)
		}
		again, err := ParseCPID(c.String())
		if err != nil || again != c {
			t.Fatalf("%q -> %d -> %q -> %d, %v", s, c, c.String(), again, err)
		}
	})
}
