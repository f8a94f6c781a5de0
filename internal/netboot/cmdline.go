package netboot

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/pki"
)

// MaxCmdline bounds the command line the parser reads (the kernel's own
// limit on x86 is 2048; /proc/cmdline of a Xen guest can be longer).
const MaxCmdline = 64 << 10

// DefaultPort is the cluster port when ssi.server= gives none.
const DefaultPort = 7470

// Params is what the boot flow reads from the kernel command line. The
// keys are those `ssi xen-config` writes (ssi.server=, ssi.token=) and a
// few of the boot flow's own.
type Params struct {
	Server  string           // ssi.server=IP[:PORT]: any member of the cluster, IP:PORT
	Token   string           // ssi.token=TOKEN: this node's join token
	HWAddr  net.HardwareAddr // ssi.hwaddr=MAC: the node's NIC (default: the only NIC, or the first that gets a lease)
	Init    string           // ssi.init=PATH: the real init in the cluster root (default /sbin/init)
	Timeout time.Duration    // ssi.timeout=DURATION: how long each network step may take (default 30s)
	Rescue  bool             // ssi.rescue: stop at the rescue message before joining
	Args    []string         // after "--": arguments for the real init
}

// Defaults of Params.
const (
	DefaultInit    = "/sbin/init"
	DefaultTimeout = 30 * time.Second
)

// SplitCmdline splits a kernel command line into words as the kernel does
// (lib/cmdline.c's next_arg): spaces separate words, a double quote starts
// or ends a quoted part in which spaces are kept; the quotes are dropped.
func SplitCmdline(s string) []string {
	var words []string
	var b strings.Builder
	in, quoted := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			in = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v'):
			if in {
				words = append(words, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, b.String())
	}
	return words
}

// ParseCmdline reads the boot flow's parameters from a kernel command
// line. Unknown words are the kernel's or other programs' and are ignored;
// a malformed ssi.* value is an error naming it. ssi.server= and ssi.token=
// are required (ErrMissing names which is missing).
func ParseCmdline(s string) (Params, error) {
	p := Params{Init: DefaultInit, Timeout: DefaultTimeout}
	if len(s) > MaxCmdline {
		return p, fmt.Errorf("the kernel command line is %d bytes, more than %d", len(s), MaxCmdline)
	}
	words := SplitCmdline(s)
	for i, w := range words {
		if w == "--" {
			p.Args = append([]string(nil), words[i+1:]...)
			break
		}
		k, v, hasV := strings.Cut(w, "=")
		if !strings.HasPrefix(k, "ssi.") {
			continue
		}
		var err error
		switch k {
		case "ssi.server":
			p.Server, err = parseServer(v)
		case "ssi.token":
			if _, err = pki.ParseToken(v); err == nil {
				p.Token = v
			}
		case "ssi.hwaddr":
			var mac string
			if mac, err = nodeaddr.ParseMAC(v); err == nil {
				p.HWAddr, err = net.ParseMAC(mac)
			}
		case "ssi.init":
			if !strings.HasPrefix(v, "/") || strings.ContainsRune(v, 0) {
				err = errors.New("not an absolute path")
			} else {
				p.Init = v
			}
		case "ssi.timeout":
			var d time.Duration
			if d, err = time.ParseDuration(v); err == nil && (d <= 0 || d > time.Hour) {
				err = errors.New("must be more than 0 and at most 1h")
			}
			p.Timeout = d
		case "ssi.rescue":
			if hasV {
				p.Rescue, err = strconv.ParseBool(v)
			} else {
				p.Rescue = true
			}
		default:
			continue // a later release's parameter
		}
		if err != nil {
			return p, fmt.Errorf("kernel command line: %s=%q: %w", k, v, err)
		}
	}
	if p.Server == "" {
		return p, fmt.Errorf("%w: ssi.server=IP[:PORT] (any member of the cluster)", ErrMissing)
	}
	if p.Token == "" {
		return p, fmt.Errorf("%w: ssi.token=TOKEN (write it with ssi xen-config --with-token, or ssi vm)", ErrMissing)
	}
	return p, nil
}

// ErrMissing: a required parameter is not on the kernel command line.
var ErrMissing = errors.New("missing on the kernel command line")

func parseServer(v string) (string, error) {
	if ap, err := netip.ParseAddrPort(v); err == nil {
		if !ap.Addr().Is4() || ap.Port() == 0 {
			return "", errors.New("want an IPv4 address and a port other than 0")
		}
		return ap.String(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return "", errors.New("want IP or IP:PORT with an IPv4 address")
	}
	return netip.AddrPortFrom(a, DefaultPort).String(), nil
}
