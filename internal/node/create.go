package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
)

// ErrAlreadyInitialized refuses to overwrite an existing node.
var ErrAlreadyInitialized = errors.New("data directory already holds an ssi node")

// InitOptions create a cluster.
type InitOptions struct {
	DataDir     DataDir
	ClusterName string
	HWAddr      string
	IPAddr      string
	NodeName    string
	Config      state.Config
}

// Init creates a new cluster with this machine as node 1: the cluster CA,
// node 1's certificate, the Raft stores with a one-voter configuration, and
// the bootstrap command the daemon applies when it first leads.
func Init(o InitOptions) (Meta, error) {
	if o.DataDir.Exists() {
		return Meta{}, fmt.Errorf("%w: %s (remove it first if you really want a new cluster)", ErrAlreadyInitialized, o.DataDir)
	}
	if err := state.ValidClusterName(o.ClusterName); err != nil {
		return Meta{}, err
	}
	mac, err := nodeaddr.ParseMAC(o.HWAddr)
	if err != nil {
		return Meta{}, err
	}
	ip, err := nodeaddr.ParseIP(o.IPAddr)
	if err != nil {
		return Meta{}, err
	}
	if err := o.Config.Validate(); err != nil {
		return Meta{}, err
	}
	if o.Config.NamePrefix == "" {
		o.Config.NamePrefix = state.DefaultNamePrefix(o.ClusterName)
	}
	name := o.NodeName
	if name == "" {
		name = o.Config.NamePrefix + "1"
	}
	if err := state.ValidNodeName(name); err != nil {
		return Meta{}, err
	}
	if err := os.MkdirAll(string(o.DataDir), 0o700); err != nil {
		return Meta{}, fmt.Errorf("create data directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(o.DataDir.tls().Dir)
			os.RemoveAll(o.DataDir.raftDir())
		}
	}()
	ca, err := pki.NewCA(o.ClusterName)
	if err != nil {
		return Meta{}, err
	}
	key, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return Meta{}, err
	}
	cert, err := ca.SignNode(csr, 1, ip)
	if err != nil {
		return Meta{}, err
	}
	if err := o.DataDir.tls().WriteIdentity(ca.Cert.Raw, ca.Key, cert, key); err != nil {
		return Meta{}, err
	}
	m := Meta{ClusterName: o.ClusterName, Num: 1, Name: name, HWAddr: mac, IPAddr: ip.String(), Port: o.Config.Port}
	if err := bootstrapRaft(o.DataDir, m); err != nil {
		return Meta{}, err
	}
	m.Bootstrap = &state.Bootstrap{
		Name: o.ClusterName, CAFingerprint: ca.Fingerprint(), Config: o.Config, Time: time.Now(),
		Node: state.NodeSpec{Num: 1, Name: name, HWAddr: mac, IPAddr: ip.String()},
	}
	if err := o.DataDir.SaveMeta(m); err != nil {
		return Meta{}, err
	}
	ok = true
	return m, nil
}

func bootstrapRaft(dir DataDir, m Meta) error {
	st, err := openStores(dir)
	if err != nil {
		return err
	}
	defer st.Close()
	_, trans := raft.NewInmemTransport(raft.ServerAddress(m.Addr()))
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: serverID(m.Num), Address: raft.ServerAddress(m.Addr())}}}
	if err := raft.BootstrapCluster(raftConfig(m.Num, RaftTiming{}), st.logs, st.stable, st.snaps, trans, conf); err != nil {
		return fmt.Errorf("bootstrap Raft: %w", err)
	}
	return nil
}

func serverID(num uint32) raft.ServerID { return raft.ServerID(strconv.FormatUint(uint64(num), 10)) }

func joinHostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// JoinOptions join a cluster from a new machine.
type JoinOptions struct {
	DataDir DataDir
	Server  string // IP[:PORT] of any member
	Token   string
	HWAddr  string
}

// Join asks a member to admit this machine: the token proves the right to
// join and pins the cluster CA; the cluster recognises the machine by its
// MAC and returns its number, name and a certificate for a key generated
// here. Nothing is written unless the cluster accepts.
func Join(ctx context.Context, o JoinOptions) (Meta, error) {
	if o.DataDir.Exists() {
		return Meta{}, fmt.Errorf("%w: %s already belongs to a node; start it with 'ssi daemon --data-dir %s'", ErrAlreadyInitialized, o.DataDir, o.DataDir)
	}
	tok, err := pki.ParseToken(o.Token)
	if err != nil {
		return Meta{}, err
	}
	mac, err := nodeaddr.ParseMAC(o.HWAddr)
	if err != nil {
		return Meta{}, err
	}
	server, err := serverAddr(o.Server)
	if err != nil {
		return Meta{}, err
	}
	key, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return Meta{}, err
	}
	tr := &http.Transport{TLSClientConfig: pki.JoinTLS(tok.Fingerprint), ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	defer tr.CloseIdleConnections()
	client := ssiv1connect.NewMembershipClient(&http.Client{Transport: tr, Timeout: 30 * time.Second}, "https://"+server)
	resp, err := client.Join(ctx, connect.NewRequest(&ssiv1.JoinRequest{TokenSecret: tok.Secret, Hwaddr: mac, CsrDer: csr}))
	if err != nil {
		return Meta{}, fmt.Errorf("join the cluster through %s: %w", server, err)
	}
	r := resp.Msg
	caCert, err := x509.ParseCertificate(r.CaDer)
	if err != nil || pki.Fingerprint(caCert.Raw) != tok.Fingerprint {
		return Meta{}, fmt.Errorf("join through %s: the returned CA does not match the token", server)
	}
	if err := os.MkdirAll(string(o.DataDir), 0o700); err != nil {
		return Meta{}, fmt.Errorf("create data directory: %w", err)
	}
	var caKey *ecdsa.PrivateKey
	if len(r.CaKeyDer) > 0 {
		if caKey, err = x509.ParseECPrivateKey(r.CaKeyDer); err != nil {
			return Meta{}, fmt.Errorf("parse CA key from %s: %w", server, err)
		}
	}
	if err := o.DataDir.tls().WriteIdentity(r.CaDer, caKey, r.CertDer, key); err != nil {
		return Meta{}, err
	}
	m := Meta{ClusterName: r.ClusterName, Num: r.Num, Name: r.Name, HWAddr: mac, IPAddr: r.Ipaddr, Port: int(r.Port), Seeds: r.Peers}
	if err := o.DataDir.SaveMeta(m); err != nil {
		return Meta{}, err
	}
	return m, nil
}

func serverAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	ip, err := nodeaddr.ParseIP(s)
	if err != nil {
		return "", fmt.Errorf("--server %q: expected IP or IP:PORT: %w", s, err)
	}
	return joinHostPort(ip.String(), state.DefaultPort), nil
}
