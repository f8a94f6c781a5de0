package rexec

import (
	"regexp"
	"strings"
	"testing"
)

// validID must accept exactly what the documented pattern does.
func TestValidIDIsThePattern(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	ids := []string{"", "a", "A", "0", "3000042", "job-1", "a.b_c-d", ".a", "_a", "-a", "a/b", "a b", "é", "a\n",
		strings.Repeat("x", 63), strings.Repeat("x", 64), strings.Repeat("x", 65), "x" + strings.Repeat("-", 63), "1234-5"}
	for c := 0; c < 256; c++ {
		ids = append(ids, string(rune(c)), "a"+string([]byte{byte(c)}))
	}
	for _, id := range ids {
		if got, want := validID(id), re.MatchString(id); got != want {
			t.Errorf("validID(%q) = %v, the pattern says %v", id, got, want)
		}
	}
}
