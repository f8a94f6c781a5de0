// Package node is the ssi daemon's wiring: Run builds the parts of a node
// (its data directory and identity, the TLS port and the control socket,
// Raft and the state machine, the peer network) and the subsystems
// (consensus, membership, procspace, placement, dhcpd), hands each what it
// needs, registers their RPC services and starts and stops them
// (wire.go). It also creates a node's data directory, either as the first
// node of a new cluster (Init) or by joining one with a token (Join).
//
// It must not hold logic of its own: a decision, a loop or an RPC handler
// belongs to the subsystem whose domain it is.
package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
)

// DefaultDataDir is where a node keeps its state unless told otherwise.
const DefaultDataDir = "/var/lib/ssi"

// DefaultSocket is the control socket's default path.
const DefaultSocket = "/run/ssi/ssi.sock"

// ErrNotInitialized means the data directory holds no node.
var ErrNotInitialized = errors.New("data directory holds no ssi node")

// Meta is a node's own identity, kept in DATA/node.json.
type Meta struct {
	ClusterName string           `json:"cluster_name"`
	Num         uint32           `json:"num"`
	Name        string           `json:"name"`
	HWAddr      string           `json:"hwaddr"`
	IPAddr      string           `json:"ipaddr"`
	Port        int              `json:"port"`
	Seeds       []string         `json:"seeds,omitempty"`     // ip:port of members known at join
	Bootstrap   *state.Bootstrap `json:"bootstrap,omitempty"` // node 1: applied at first election
}

// Addr is the node's cluster address.
func (m Meta) Addr() string { return joinHostPort(m.IPAddr, m.Port) }

// DataDir is a node's data directory.
type DataDir string

func (d DataDir) metaPath() string   { return filepath.Join(string(d), "node.json") }
func (d DataDir) raftDir() string    { return filepath.Join(string(d), "raft") }
func (d DataDir) tls() pki.Files     { return pki.Files{Dir: filepath.Join(string(d), "tls")} }
func (d DataDir) bootIDPath() string { return filepath.Join(string(d), "boot-count") }

// Exists reports whether the directory already holds a node.
func (d DataDir) Exists() bool {
	_, err := os.Stat(d.metaPath())
	return err == nil
}

// LoadMeta reads node.json.
func (d DataDir) LoadMeta() (Meta, error) {
	var m Meta
	b, err := os.ReadFile(d.metaPath())
	if errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("%w: %s has no node.json; create a cluster with 'ssi init' or join one with 'ssi join'", ErrNotInitialized, d)
	}
	if err != nil {
		return m, fmt.Errorf("read node identity: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("parse %s: %w", d.metaPath(), err)
	}
	return m, nil
}

// SaveMeta writes node.json atomically.
func (d DataDir) SaveMeta(m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode node identity: %w", err)
	}
	tmp := d.metaPath() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	if err := os.Rename(tmp, d.metaPath()); err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	return nil
}
