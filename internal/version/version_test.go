package version

import "testing"

func TestParseAndString(t *testing.T) {
	for in, want := range map[string]V{"0.1.0": {0, 1, 0}, "v1.2.3": {1, 2, 3}, "65535.0.10": {65535, 0, 10}} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if s := (V{1, 20, 3}).String(); s != "1.20.3" {
		t.Errorf("String = %q", s)
	}
	for _, bad := range []string{"", "1", "1.2", "1.2.3.4", "1.2.x", "1.-2.3", "1.2.65536", "01.2.3", " 1.2.3", "1.2.+3"} {
		if v, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", bad, v)
		}
	}
	if Current.String() != Version || Current.IsZero() {
		t.Errorf("Current %v does not match Version %q", Current, Version)
	}
}

func TestCompare(t *testing.T) {
	order := []V{{0, 0, 0}, {0, 0, 9}, {0, 1, 0}, {0, 1, 1}, {0, 10, 0}, {1, 0, 0}, {2, 0, 0}}
	for i, a := range order {
		for j, b := range order {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", a, b, got, want)
			}
			if a.Less(b) != (want < 0) {
				t.Errorf("%v.Less(%v) wrong", a, b)
			}
		}
	}
	if Max(V{0, 2, 0}, V{0, 10, 0}) != (V{0, 10, 0}) || Max(V{1, 0, 0}, V{0, 9, 9}) != (V{1, 0, 0}) {
		t.Errorf("Max picks the wrong version")
	}
}
