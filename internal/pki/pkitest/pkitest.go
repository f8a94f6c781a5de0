// Package pkitest issues node identities for tests, as 'ssi init' and 'ssi
// join' do, through the files a node keeps. It is for tests only.
package pkitest

import (
	"net/netip"
	"testing"

	"github.com/ssi-cluster/ssi/internal/pki"
)

// Identity issues node num's identity from ca for ip.
func Identity(t testing.TB, ca *pki.CA, num uint32, ip netip.Addr) *pki.Identity {
	t.Helper()
	key, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.SignNode(csr, num, ip)
	if err != nil {
		t.Fatal(err)
	}
	files := pki.Files{Dir: t.TempDir()}
	if err := files.WriteIdentity(ca.Cert.Raw, nil, der, key); err != nil {
		t.Fatal(err)
	}
	id, err := files.LoadIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}
