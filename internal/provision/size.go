package provision

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10},
}

// ParseSize parses an image size: a number of bytes, optionally with a
// fraction, followed by an optional binary unit K, M, G or T (also written
// KiB, MiB, GiB, TiB; any letter case; B alone means bytes). "512M", "2G",
// "1GiB", "1.5G" and "65536" are sizes. Decimal units such as "MB" are
// refused as ambiguous, as are negative numbers and fractions of a byte.
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	if num == "" || num == "." || strings.Count(num, ".") > 1 {
		return 0, fmt.Errorf("%w: size %q: expected a number with an optional unit, e.g. 512M, 2G, 1GiB", ErrInvalid, orig)
	}
	mult := int64(1)
	switch u := strings.ToUpper(unit); u {
	case "", "B":
	case "K", "KIB", "M", "MIB", "G", "GIB", "T", "TIB":
		for _, su := range sizeUnits {
			if u[:1] == su.suffix {
				mult = su.mult
			}
		}
	case "KB", "MB", "GB", "TB":
		return 0, fmt.Errorf("%w: size %q: %q is ambiguous (1000 or 1024?); write %s or %siB for powers of 1024", ErrInvalid, orig, unit, u[:1], u[:1])
	default:
		return 0, fmt.Errorf("%w: size %q: unknown unit %q (use K, M, G, T or KiB, MiB, GiB, TiB)", ErrInvalid, orig, unit)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%w: size %q: bad number %q", ErrInvalid, orig, num)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("%w: size %q is not a whole number of bytes", ErrInvalid, orig)
	}
	if !r.Num().IsInt64() || r.Num().Int64() > math.MaxInt64 {
		return 0, fmt.Errorf("%w: size %q is too large", ErrInvalid, orig)
	}
	return r.Num().Int64(), nil
}

// FormatSize renders n bytes exactly, in the largest binary unit that
// divides it: 536870912 is "512M", 1536 is "1536" ... "1.5K" is never
// produced. ParseSize(FormatSize(n)) == n for every n >= 0.
func FormatSize(n int64) string {
	if n > 0 {
		for _, u := range sizeUnits {
			if n%u.mult == 0 {
				return strconv.FormatInt(n/u.mult, 10) + u.suffix
			}
		}
	}
	return strconv.FormatInt(n, 10)
}
