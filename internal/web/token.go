package web

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// A dashboard token is "ssid1.<payload>.<signature>": the payload is the
// JSON of Claims, the signature an ECDSA (P-256, SHA-256) signature by the
// cluster CA's key over a domain string and the payload, both base64url.
// Every member holds the CA (and its key: any member may become leader),
// so any node issues and any node verifies; nothing is stored. The domain
// string keeps a token signature from ever being mistaken for a
// certificate's (those sign DER, which never starts with this text).
const (
	tokenPrefix = "ssid1."
	tokenDomain = "ssi dashboard token v1\x00"
	// MaxTokenLen bounds what the server parses (a token is ~400 bytes).
	MaxTokenLen = 2048
	// DefaultTokenTTL is a token's lifetime unless asked otherwise.
	DefaultTokenTTL = 12 * time.Hour
	// MaxTokenTTL bounds it: tokens cannot be revoked before they expire.
	MaxTokenTTL = 30 * 24 * time.Hour
)

// Claims are what a token says about its holder: the identity of the
// user who issued it on a node's control socket (as that socket's peer
// credentials gave it), whether it may change the cluster, and its
// lifetime. The dashboard acts with exactly that identity.
type Claims struct {
	ID      string   `json:"id"`
	Cluster string   `json:"cluster"` // the CA fingerprint's first 16 hex digits
	UID     uint32   `json:"uid"`
	GID     uint32   `json:"gid"`
	Groups  []uint32 `json:"groups,omitempty"`
	User    string   `json:"user,omitempty"`
	Admin   bool     `json:"admin"`
	Node    uint32   `json:"node"` // the node that issued it
	Issued  int64    `json:"iat"`  // Unix seconds
	Expires int64    `json:"exp"`  // Unix seconds
}

// Errors of Verify.
var (
	ErrNoToken      = errors.New("no dashboard token")
	ErrBadToken     = errors.New("not a valid dashboard token of this cluster")
	ErrTokenExpired = errors.New("the dashboard token has expired; get a new one with 'ssi dashboard token'")
)

var b64 = base64.RawURLEncoding.Strict()

func digest(payload []byte) []byte {
	h := sha256.New()
	h.Write([]byte(tokenDomain))
	h.Write(payload)
	return h.Sum(nil)
}

// clusterID is the cluster's short name in tokens.
func clusterID(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.Raw)
	return hex.EncodeToString(sum[:8])
}

// Issue signs c with the CA key; ID, Cluster and Issued are filled in.
func Issue(key *ecdsa.PrivateKey, ca *x509.Certificate, c Claims, now time.Time) (string, error) {
	if key == nil {
		return "", errors.New("this node holds no cluster CA key to sign dashboard tokens")
	}
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	c.ID, c.Cluster, c.Issued = hex.EncodeToString(id), clusterID(ca), now.Unix()
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest(payload))
	if err != nil {
		return "", fmt.Errorf("sign the dashboard token: %w", err)
	}
	return tokenPrefix + b64.EncodeToString(payload) + "." + b64.EncodeToString(sig), nil
}

// Verify checks a token against the cluster CA and the time.
func Verify(ca *x509.Certificate, tok string, now time.Time) (Claims, error) {
	var c Claims
	if tok == "" {
		return c, ErrNoToken
	}
	if len(tok) > MaxTokenLen || !strings.HasPrefix(tok, tokenPrefix) {
		return c, ErrBadToken
	}
	p, s, ok := strings.Cut(strings.TrimPrefix(tok, tokenPrefix), ".")
	if !ok {
		return c, ErrBadToken
	}
	payload, err1 := b64.DecodeString(p)
	sig, err2 := b64.DecodeString(s)
	if err1 != nil || err2 != nil {
		return c, ErrBadToken
	}
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, digest(payload), sig) {
		return c, ErrBadToken
	}
	if err := json.Unmarshal(payload, &c); err != nil || c.Cluster != clusterID(ca) {
		return Claims{}, ErrBadToken
	}
	if now.Unix() >= c.Expires {
		return Claims{}, ErrTokenExpired
	}
	return c, nil
}
