// Package version is the ssi release this binary is. The replicated log
// stamps every entry with the lowest release that understands it
// (internal/state), so that a node too old for its cluster stops instead of
// diverging; docs/UPGRADES.md has the rules.
package version

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is this build's release, MAJOR.MINOR.PATCH. Raise it for every
// release, and always in a change that adds a Raft command type (whose entry
// in internal/state's version table names the new release).
const Version = "0.4.0"

// Current is Version, parsed.
var Current = MustParse(Version)

// V is a release number, MAJOR.MINOR.PATCH. The zero V (0.0.0) means
// "unknown".
type V struct {
	Major, Minor, Patch uint16
}

// Parse reads "MAJOR.MINOR.PATCH" (an optional leading "v" is accepted),
// each part a decimal number from 0 to 65535.
func Parse(s string) (V, error) {
	parts := strings.Split(strings.TrimPrefix(s, "v"), ".")
	if len(parts) != 3 {
		return V{}, fmt.Errorf("version %q is not MAJOR.MINOR.PATCH", s)
	}
	var n [3]uint16
	for i, p := range parts {
		// ParseUint accepts no sign and no spaces; refuse leading zeros too
		// so that every version has one spelling.
		u, err := strconv.ParseUint(p, 10, 16)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return V{}, fmt.Errorf("version %q is not MAJOR.MINOR.PATCH with numbers from 0 to 65535", s)
		}
		n[i] = uint16(u)
	}
	return V{n[0], n[1], n[2]}, nil
}

// MustParse is Parse for constants; it panics on a malformed version.
func MustParse(s string) V {
	v, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return v
}

// String is "MAJOR.MINOR.PATCH".
func (v V) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// IsZero reports whether v is the zero ("unknown") version.
func (v V) IsZero() bool { return v == V{} }

// Compare returns -1, 0 or +1 as v is older than, the same as or newer than w.
func (v V) Compare(w V) int {
	for _, d := range [3][2]uint16{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		switch {
		case d[0] < d[1]:
			return -1
		case d[0] > d[1]:
			return 1
		}
	}
	return 0
}

// Less reports whether v is older than w.
func (v V) Less(w V) bool { return v.Compare(w) < 0 }

// Max returns the newer of v and w.
func Max(v, w V) V {
	if v.Less(w) {
		return w
	}
	return v
}
