package cli

import (
	"errors"
	"testing"
)

func TestParseNetPool(t *testing.T) {
	p, err := ParseNetPool("10.1.0.100-10.1.0.199")
	if err != nil || p.First != "10.1.0.100" || p.Last != "10.1.0.199" || p.Bits != 0 {
		t.Fatalf("without /BITS: %+v %v", p, err)
	}
	if p, err := ParseNetPool("10.1.0.100-10.1.0.199/16"); err != nil || p.Bits != 16 {
		t.Fatalf("with /16: %+v %v", p, err)
	}
	for _, bad := range []string{"", "10.1.0.100", "10.1.0.100-", "10.1.0.199-10.1.0.100", "fd00::1-fd00::2", "10.1.0.1-10.1.0.9/x", "10.1.0.1-10.1.0.9/40", "10.1.0.1-10.1.1.9/24", "a-b"} {
		_, err := ParseNetPool(bad)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("ParseNetPool(%q): %v, want a usage error", bad, err)
		}
	}
}
