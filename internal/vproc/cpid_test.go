package vproc

import (
	"errors"
	"strconv"
	"sync"
	"testing"
)

func TestMakeSplitString(t *testing.T) {
	c, err := Make(3, 42)
	if err != nil || c != 3000042 || c.String() != "3000042" || c.Node() != 3 {
		t.Fatalf("Make(3, 42) = %v (%d), %v", c, int64(c), err)
	}
	n, s := Split(c)
	if n != 3 || s != 42 {
		t.Errorf("Split = %d, %d", n, s)
	}
	if c, _ := Make(MaxNode, MaxSeq); !c.Valid() || c.Node() != MaxNode {
		t.Errorf("largest CPID %d invalid", c)
	}
	for _, bad := range []struct {
		node int
		seq  uint64
	}{{0, 1}, {MaxNode + 1, 1}, {1, 0}, {1, MaxSeq + 1}} {
		if _, err := Make(bad.node, bad.seq); !errors.Is(err, ErrInvalidCPID) {
			t.Errorf("Make(%d, %d) accepted", bad.node, bad.seq)
		}
	}
	for _, c := range []CPID{0, -5, 1, 999999, 3000000} {
		if c.Valid() {
			t.Errorf("%d should be invalid", c)
		}
	}
	if CPID(0).String() != "-" || CPID(5).String() != "invalid(5)" {
		t.Errorf("String of invalid CPIDs")
	}
}

func TestParseCPID(t *testing.T) {
	c, err := ParseCPID(" 3000042 ")
	if err != nil || c != 3000042 {
		t.Fatalf("ParseCPID = %v, %v", c, err)
	}
	for _, bad := range []string{"", "x", "3.42", "-3000042", "3000000", "12", "99999999999999999999", "+3000042"} {
		if _, err := ParseCPID(bad); !errors.Is(err, ErrInvalidCPID) {
			t.Errorf("ParseCPID(%q) accepted", bad)
		}
	}
}

func TestAllocatorSkipsInUseAndWraps(t *testing.T) {
	a, err := NewAllocator(2, MaxSeq-1)
	if err != nil {
		t.Fatal(err)
	}
	used := map[CPID]bool{2000001: true}
	inUse := func(c CPID) bool { return used[c] }
	got := []CPID{}
	for range 3 {
		c, err := a.Next(inUse)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	want := []CPID{2000000 + MaxSeq, 2000002, 2000003}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("issued %v, want %v", got, want)
		}
	}
	if a.Last() != 3 || a.Node() != 2 {
		t.Errorf("Last %d Node %d", a.Last(), a.Node())
	}
	if _, err := NewAllocator(0, 0); err == nil {
		t.Errorf("node 0 accepted")
	}
	if _, err := NewAllocator(1, MaxSeq+1); err == nil {
		t.Errorf("corrupt last accepted")
	}
}

func TestAllocatorExhausted(t *testing.T) {
	a, _ := NewAllocator(1, 0)
	if _, err := a.Next(func(CPID) bool { return true }); !errors.Is(err, ErrExhausted) {
		t.Errorf("all in use: %v", err)
	}
}

func TestAllocatorConcurrentUnique(t *testing.T) {
	a, _ := NewAllocator(7, 0)
	var mu sync.Mutex
	seen := map[CPID]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				c, err := a.Next(nil)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[c] {
					t.Errorf("duplicate %d", c)
				}
				seen[c] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 4000 {
		t.Errorf("issued %d", len(seen))
	}
}

func FuzzParseCPID(f *testing.F) {
	for _, s := range []string{"3000042", "1000001", "0", "x", "1048575999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCPID(s)
		if err != nil {
			return
		}
		if !c.Valid() || c.String() != strconv.FormatInt(int64(c), 10) {
			t.Fatalf("%q parsed to %d which does not print back", s, c)
		}
		again, err := ParseCPID(c.String())
		if err != nil || again != c {
			t.Fatalf("round trip of %q: %v %v", s, again, err)
		}
	})
}

func FuzzSplit(f *testing.F) {
	f.Add(int64(3000042))
	f.Add(int64(-1))
	f.Fuzz(func(t *testing.T, v int64) {
		c := CPID(v)
		n, s := Split(c)
		if c.Valid() {
			back, err := Make(n, s)
			if err != nil || back != c {
				t.Fatalf("Split(%d) = %d,%d does not rebuild it", v, n, s)
			}
		}
	})
}
