// Package pki owns the cluster's trust: the cluster CA created at `ssi init`,
// node certificates signed from certificate requests (a node's private key
// never leaves it), the TLS configurations both sides of a node-to-node
// connection use, and join tokens (a one-time secret plus the CA
// fingerprint, so a joining machine can verify it talks to the right
// cluster). It does no network I/O.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrBadToken is returned (wrapped) for a malformed join token.
var ErrBadToken = errors.New("malformed join token")

// CA is the cluster certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey // nil on nodes that cannot sign
}

// NewCA creates a self-signed CA for the cluster.
func NewCA(clusterName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ssi cluster CA " + clusterName, Organization: []string{"ssi"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Fingerprint is the hex SHA-256 of the CA certificate.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert.Raw) }

// Fingerprint returns the hex SHA-256 of a DER certificate.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// NodeCommonName is the subject of node num's certificate.
func NodeCommonName(num uint32) string { return fmt.Sprintf("ssi-node-%d", num) }

// NodeNum extracts the node number from a verified node certificate.
func NodeNum(cert *x509.Certificate) (uint32, bool) {
	s, ok := strings.CutPrefix(cert.Subject.CommonName, "ssi-node-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil && n > 0
}

// NewKeyAndCSR generates a node key and a certificate request for it.
func NewKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ssi-node-request"}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate request: %w", err)
	}
	return key, csr, nil
}

// SignNode issues node num's certificate for the key in csrDER, valid for
// the node's IP address (and loopback, for the local CLI tools).
func (ca *CA) SignNode(csrDER []byte, num uint32, ip netip.Addr) ([]byte, error) {
	if ca.Key == nil {
		return nil, errors.New("this node does not hold the cluster CA key; only voters can sign")
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: NodeCommonName(num), Organization: []string{"ssi"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{ip.AsSlice()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign node %d certificate: %w", num, err)
	}
	return der, nil
}

func randSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

// Token is a join token: a secret, and the fingerprint of the CA the joining
// machine must find on the other end. Written as SSI1-<secret>-<fingerprint>.
type Token struct {
	Secret      string // 32 lower-case hex digits
	Fingerprint string // 64 lower-case hex digits
}

const tokenPrefix = "SSI1-"

// NewToken returns a fresh token for the CA with the given fingerprint.
func NewToken(fingerprint string) (Token, error) {
	if len(fingerprint) != 64 {
		return Token{}, fmt.Errorf("a join token needs the cluster CA's fingerprint (64 hex digits), got %q", fingerprint)
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return Token{}, fmt.Errorf("generate token: %w", err)
	}
	return Token{Secret: hex.EncodeToString(b), Fingerprint: fingerprint}, nil
}

func (t Token) String() string { return tokenPrefix + t.Secret + "-" + t.Fingerprint }

// Hash is what the replicated state keeps of the secret.
func (t Token) Hash() string { return HashSecret(t.Secret) }

// HashSecret hashes a token secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte("ssi-join-token:" + secret))
	return hex.EncodeToString(sum[:])
}

// EqualHash compares two hashes in constant time.
func EqualHash(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// ParseToken parses SSI1-<32 hex>-<64 hex>.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return Token{}, fmt.Errorf("%w: it must start with %q (copy it whole from the ssi-addnode output)", ErrBadToken, tokenPrefix)
	}
	secret, fp, ok := strings.Cut(rest, "-")
	if !ok || len(secret) != 32 || len(fp) != 64 || !isLowerHex(secret) || !isLowerHex(fp) {
		return Token{}, fmt.Errorf("%w: expected SSI1-<32 hex digits>-<64 hex digits>", ErrBadToken)
	}
	return Token{Secret: secret, Fingerprint: fp}, nil
}

func isLowerHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// Files are the PEM files of a node's identity in its data directory.
type Files struct{ Dir string }

// Paths of the identity files.
func (f Files) CACert() string   { return filepath.Join(f.Dir, "ca.crt") }
func (f Files) CAKey() string    { return filepath.Join(f.Dir, "ca.key") }
func (f Files) NodeCert() string { return filepath.Join(f.Dir, "node.crt") }
func (f Files) NodeKey() string  { return filepath.Join(f.Dir, "node.key") }

// WriteIdentity stores the CA certificate (and key, if given) and the
// node's certificate and key. Keys are written 0600.
func (f Files) WriteIdentity(caDER []byte, caKey *ecdsa.PrivateKey, certDER []byte, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", f.Dir, err)
	}
	if err := writePEM(f.CACert(), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if caKey != nil {
		b, err := x509.MarshalECPrivateKey(caKey)
		if err != nil {
			return fmt.Errorf("encode CA key: %w", err)
		}
		if err := writePEM(f.CAKey(), "EC PRIVATE KEY", b, 0o600); err != nil {
			return err
		}
	}
	if err := writePEM(f.NodeCert(), "CERTIFICATE", certDER, 0o644); err != nil {
		return err
	}
	b, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode node key: %w", err)
	}
	return writePEM(f.NodeKey(), "EC PRIVATE KEY", b, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Identity is a node's loaded TLS identity.
type Identity struct {
	CA      *CA
	Cert    tls.Certificate
	Num     uint32
	Pool    *x509.CertPool
	CAKeyOK bool
}

// LoadIdentity reads the files written by WriteIdentity.
func (f Files) LoadIdentity() (*Identity, error) {
	caPEM, err := os.ReadFile(f.CACert())
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	blk, _ := pem.Decode(caPEM)
	if blk == nil {
		return nil, fmt.Errorf("%s holds no PEM certificate", f.CACert())
	}
	caCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", f.CACert(), err)
	}
	ca := &CA{Cert: caCert}
	if kp, err := os.ReadFile(f.CAKey()); err == nil {
		if kb, _ := pem.Decode(kp); kb != nil {
			if k, err := x509.ParseECPrivateKey(kb.Bytes); err == nil {
				ca.Key = k
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(f.NodeCert(), f.NodeKey())
	if err != nil {
		return nil, fmt.Errorf("load node certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse node certificate: %w", err)
	}
	cert.Leaf = leaf
	num, ok := NodeNum(leaf)
	if !ok {
		return nil, fmt.Errorf("%s is not an ssi node certificate", f.NodeCert())
	}
	// Send the CA along so joining machines can check it against their token.
	cert.Certificate = append(cert.Certificate, caCert.Raw)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &Identity{CA: ca, Cert: cert, Num: num, Pool: pool, CAKeyOK: ca.Key != nil}, nil
}

// ServerTLS is the configuration of a node's listener: it presents the node
// certificate and verifies client certificates against the cluster CA when
// given. Handlers other than Join must require one (see transport).
func (id *Identity) ServerTLS(nextProtos []string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    id.Pool,
		NextProtos:   nextProtos,
	}
}

// ClientTLS is the configuration for dialing another node: it presents the
// node certificate and accepts only servers certified by the cluster CA.
func (id *Identity) ClientTLS(nextProtos []string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		RootCAs:      id.Pool,
		NextProtos:   nextProtos,
	}
}

// JoinTLS is the client configuration of a machine that holds only a token:
// it accepts a server whose chain ends in a CA with the token's fingerprint
// and whose certificate that CA signed.
func JoinTLS(fingerprint string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below against the pinned CA fingerprint
		NextProtos:         []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) < 2 {
				return errors.New("the server did not present its cluster CA")
			}
			ca := raw[len(raw)-1]
			if !EqualHash(Fingerprint(ca), fingerprint) {
				return fmt.Errorf("the server's cluster CA has fingerprint %s, but the token expects %s: wrong cluster or a man in the middle", Fingerprint(ca)[:16], fingerprint[:16])
			}
			caCert, err := x509.ParseCertificate(ca)
			if err != nil {
				return fmt.Errorf("parse server CA: %w", err)
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return fmt.Errorf("parse server certificate: %w", err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(caCert)
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err != nil {
				return fmt.Errorf("server certificate not signed by the cluster CA: %w", err)
			}
			return nil
		},
	}
}

// MarshalKey encodes the CA's private key (DER), for handing to a new voter.
func (ca *CA) MarshalKey() ([]byte, error) {
	if ca.Key == nil {
		return nil, errors.New("this node does not hold the cluster CA key")
	}
	return x509.MarshalECPrivateKey(ca.Key)
}
