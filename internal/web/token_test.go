package web

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/pki"
)

func TestTokenRoundTripAndRefusals(t *testing.T) {
	ca, err := pki.NewCA("a")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("b")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	tok, err := Issue(ca.Key, ca.Cert, Claims{UID: 1000, GID: 1000, User: "ann", Admin: true, Node: 2, Expires: now.Add(time.Hour).Unix()}, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Verify(ca.Cert, tok, now.Add(time.Minute))
	if err != nil || c.UID != 1000 || !c.Admin || c.User != "ann" || c.Node != 2 {
		t.Fatalf("verify: %+v %v", c, err)
	}
	if _, err := Verify(ca.Cert, tok, now.Add(time.Hour)); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired token: %v", err)
	}
	if _, err := Verify(other.Cert, tok, now); !errors.Is(err, ErrBadToken) {
		t.Errorf("another cluster's CA accepted the token: %v", err)
	}
	// A read-only token changed into an admin one: the signature fails.
	ro, _ := Issue(ca.Key, ca.Cert, Claims{UID: 1000, Expires: now.Add(time.Hour).Unix()}, now)
	parts := strings.Split(strings.TrimPrefix(ro, tokenPrefix), ".")
	payload, _ := b64.DecodeString(parts[0])
	forged := strings.Replace(string(payload), `"admin":false`, `"admin":true`, 1)
	if forged == string(payload) {
		t.Fatal("test payload has no admin field")
	}
	if _, err := Verify(ca.Cert, tokenPrefix+b64.EncodeToString([]byte(forged))+"."+parts[1], now); !errors.Is(err, ErrBadToken) {
		t.Errorf("forged admin token: %v", err)
	}
	for _, bad := range []string{"x", tokenPrefix, tokenPrefix + "a.b", tokenPrefix + strings.Repeat("a", MaxTokenLen), "SSI1-abc"} {
		if _, err := Verify(ca.Cert, bad, now); !errors.Is(err, ErrBadToken) {
			t.Errorf("%.20q: %v", bad, err)
		}
	}
	if _, err := Verify(ca.Cert, "", now); !errors.Is(err, ErrNoToken) {
		t.Errorf("empty: %v", err)
	}
	if _, err := Issue(nil, ca.Cert, Claims{}, now); err == nil {
		t.Error("issued without a key")
	}
}

func FuzzVerify(f *testing.F) {
	ca, err := pki.NewCA("a")
	if err != nil {
		f.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	tok, _ := Issue(ca.Key, ca.Cert, Claims{Expires: now.Add(time.Hour).Unix()}, now)
	f.Add(tok)
	f.Add(tokenPrefix + "e30.MEUCIQ")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Verify(ca.Cert, s, now)
		if err == nil && s != tok {
			t.Fatalf("accepted %q as %+v", s, c)
		}
	})
}
