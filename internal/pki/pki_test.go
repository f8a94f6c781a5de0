package pki

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	ca, err := NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := NewToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseToken(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("ParseToken(%q) = %+v, %v", tok, got, err)
	}
	if tok.Hash() == HashSecret("other") || !EqualHash(tok.Hash(), HashSecret(tok.Secret)) {
		t.Errorf("hashing is broken")
	}
	for _, bad := range []string{"", "SSI1-", "SSI2-" + tok.Secret + "-" + tok.Fingerprint, strings.ToUpper(tok.String()),
		"SSI1-" + tok.Secret[1:] + "-" + tok.Fingerprint, "SSI1-" + tok.Secret + tok.Fingerprint, "SSI1-" + tok.Secret + "-" + tok.Fingerprint + "0"} {
		if _, err := ParseToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("SSI1-" + strings.Repeat("a", 32) + "-" + strings.Repeat("0", 64))
	f.Add("SSI1-x-y")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if again, err := ParseToken(tok.String()); err != nil || again != tok {
			t.Fatalf("%q parsed to %+v, which does not round-trip", s, tok)
		}
	})
}

func TestSignedNodeCertificateIsAcceptedAndForeignIsNot(t *testing.T) {
	dir := t.TempDir()
	ca, _ := NewCA("c")
	key, csr, _ := NewKeyAndCSR()
	der, err := ca.SignNode(csr, 7, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	files := Files{Dir: dir}
	if err := files.WriteIdentity(ca.Cert.Raw, ca.Key, der, key); err != nil {
		t.Fatal(err)
	}
	id, err := files.LoadIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if id.Num != 7 || !id.CAKeyOK {
		t.Errorf("identity %+v", id)
	}
	if _, err := ca.SignNode([]byte("junk"), 1, netip.MustParseAddr("127.0.0.1")); err == nil {
		t.Errorf("signed a junk request")
	}
	// A TLS server with the node identity accepts a client of the same CA
	// and refuses one of another CA.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", id.ServerTLS([]string{"x", "h2"}))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Write([]byte("k"))
				c.Close()
			}()
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Read(make([]byte, 1))
		return err
	}
	if err := dial(id.ClientTLS([]string{"x"})); err != nil {
		t.Errorf("same-CA client refused: %v", err)
	}
	if err := dial(JoinTLS(ca.Fingerprint())); err != nil {
		t.Errorf("join client with the right fingerprint refused: %v", err)
	}
	if err := dial(JoinTLS(strings.Repeat("0", 64))); err == nil || !strings.Contains(err.Error(), "wrong cluster") {
		t.Errorf("join client with the wrong fingerprint: %v", err)
	}
	other, _ := NewCA("other")
	k2, csr2, _ := NewKeyAndCSR()
	der2, _ := other.SignNode(csr2, 1, netip.MustParseAddr("127.0.0.1"))
	foreign := id.ClientTLS([]string{"x"})
	// Force the client to present the foreign certificate (Go would
	// otherwise send none, as it matches no CA the server asks for).
	foreign.Certificates = nil
	foreign.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{Certificate: [][]byte{der2}, PrivateKey: k2}, nil
	}
	if err := dial(foreign); err == nil {
		t.Errorf("foreign-CA client accepted")
	}
}

// A token without the cluster's fingerprint could never join: refused.
func TestNewTokenNeedsTheFingerprint(t *testing.T) {
	for _, fp := range []string{"", "fp", strings.Repeat("a", 63)} {
		if tok, err := NewToken(fp); err == nil {
			t.Errorf("NewToken(%q) = %v, want an error", fp, tok)
		}
	}
}
