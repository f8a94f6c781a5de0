package provision

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"65536", 65536},
		{"512M", 512 << 20},
		{"512m", 512 << 20},
		{"2G", 2 << 30},
		{"1GiB", 1 << 30},
		{"1gib", 1 << 30},
		{"64k", 64 << 10},
		{"1T", 1 << 40},
		{"1.5G", 3 << 29},
		{" 2 G ", 2 << 30},
		{"100B", 100},
		{"0.5K", 512},
		{"8388607T", 8388607 << 40},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "expected a number"},
		{"M", "expected a number"},
		{"-1G", "expected a number"},
		{"1.2.3G", "expected a number"},
		{".", "expected a number"},
		{"1MB", "ambiguous"},
		{"2gb", "ambiguous"},
		{"3X", "unknown unit"},
		{"1.1", "whole number of bytes"},
		{"8E", "unknown unit"},
		{"8388608T", "too large"},
		{"99999999999999999999", "too large"},
	} {
		_, err := ParseSize(tc.in)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSize(%q): err = %v, want ErrInvalid mentioning %q", tc.in, err, tc.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0", 1: "1", 1536: "1536", 1024: "1K", 512 << 20: "512M", 3 << 29: "1536M", 2 << 30: "2G", 5 << 40: "5T",
	} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"512M", "2G", "1GiB", "1.5g", "0", "  7 k", "1e9", "0x10", "9223372036854775807", "9223372036854775808", "8T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSize(%q): error %v is not ErrInvalid", s, err)
			}
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d < 0", s, n)
		}
		back, err := ParseSize(FormatSize(n))
		if err != nil || back != n {
			t.Fatalf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), back, err)
		}
	})
}
