package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"connectrpc.com/connect"
	"golang.org/x/term"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/cfs"
	"github.com/ssi-cluster/ssi/internal/metrics"
	"github.com/ssi-cluster/ssi/internal/migrate"
	"github.com/ssi-cluster/ssi/internal/node"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/web"
)

func dataDirFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("SSI_DATA_DIR")
	if def == "" {
		def = node.DefaultDataDir
	}
	return fs.String("data-dir", def, "the node's data directory (or set SSI_DATA_DIR)")
}

func init() {
	cmd := &Command{
		Name:    "init",
		Summary: "create a new cluster with this machine as node 1",
		Usage:   "ssi init --cluster-name NAME --hwaddr MAC --ipaddr IP [--nodename N] [--data-dir DIR] [--voters 3] [--max-nodes 1024] [--port 7470]",
		Help: `Creates the cluster CA, node 1's certificate, the replicated state store and
node 1 in the node table. Then run the node with 'ssi daemon'. Refuses to
touch a data directory that already holds a node.

Example:
  ssi init --cluster-name ssi1 --hwaddr 0a:00:00:00:11:d1 --ipaddr 192.168.64.141
  ssi daemon`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		name := fs.String("cluster-name", "", "the cluster's name (required)")
		hw := fs.String("hwaddr", "", "this node's MAC address (required)")
		ip := fs.String("ipaddr", "", "this node's cluster IP address (required)")
		nodename := fs.String("nodename", "", "this node's name (default <prefix>1)")
		dir := dataDirFlag(fs)
		voters := fs.Int("voters", state.DefaultVoters, "how many nodes vote in Raft (odd, at most 7); the first nodes to join become voters")
		maxNodes := fs.Int("max-nodes", state.DefaultMaxNodes, "highest node number the cluster accepts")
		port := fs.Int("port", state.DefaultPort, "TLS port every node listens on")
		hbi := fs.Duration("heartbeat-interval", state.DefaultHeartbeatInterval, "how often nodes heartbeat to the leader")
		fto := fs.Duration("failure-timeout", state.DefaultFailureTimeout, "silence after which a node is declared DOWN (raise it for large clusters)")
		vra := fs.Duration("voter-replace-after", state.DefaultVoterReplaceAfter, "give a voter's Raft vote to an UP member after it has been DOWN this long (0: never)")
		prefix := fs.String("name-prefix", "", "prefix of default node names (default: the cluster name without trailing digits)")
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if *name == "" || *hw == "" || *ip == "" {
			return Usagef("--cluster-name, --hwaddr and --ipaddr are required")
		}
		if _, err := nodeaddr.ParseMAC(*hw); err != nil {
			return Usagef("--hwaddr: %v", err)
		}
		if _, err := nodeaddr.ParseIP(*ip); err != nil {
			return Usagef("--ipaddr: %v", err)
		}
		cfg := state.Config{Voters: *voters, MaxNodes: *maxNodes, Port: *port, HeartbeatInterval: *hbi, FailureTimeout: *fto, NamePrefix: *prefix, VoterReplaceAfter: *vra}
		if err := cfg.Validate(); err != nil {
			return Usagef("%v", err)
		}
		m, err := node.Init(node.InitOptions{DataDir: node.DataDir(*dir), ClusterName: *name, HWAddr: *hw, IPAddr: *ip, NodeName: *nodename, Config: cfg})
		if err != nil {
			var se *state.Error
			if errors.As(err, &se) && se.Code == state.CodeInvalid {
				return Usagef("%v", err)
			}
			return err
		}
		fmt.Fprintf(env.Stdout, "created cluster %s: node 1 (%s, %s, %s) in %s\nstart it with: ssi daemon --data-dir %s\n", m.ClusterName, m.Name, m.IPAddr, m.HWAddr, *dir, *dir)
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "daemon",
		Summary: "run this node (the ssi daemon)",
		Usage:   "ssi daemon [--data-dir DIR] [--socket PATH] [--listen ADDR] [--pid-file PATH] [--log-level info] [--cfs-mount PATH] [--cfs-export DIR] [--cfs-server N] [--cfs-job-root] [--metrics-listen ADDR] [--web-listen ADDR]",
		Help: `Runs the node whose data directory was made by 'ssi init' or 'ssi join'
until it is shut down (clusternode_shutdown, ssi shutdown --cluster) or
receives SIGTERM/SIGINT. A systemd unit is in dist/ssi.service.

Every node mounts the cluster filesystem at --cfs-mount (default /cluster;
'' for none); the node --cfs-server (default 1) serves it from --cfs-export
(default /var/lib/ssi/root; '/' for a diskless cluster). docs/CFS.md.
With --cfs-job-root, the jobs this node starts get the cluster filesystem
as their / (with the node's /proc, /dev, /sys and /run bound in): give it
to every node. A per-node flag for now; it will become a cluster setting
(docs/CFS.md).

Every node serves Prometheus metrics (--metrics-listen) and the web
dashboard (--web-listen) on a loopback address unless told otherwise
(docs/OBSERVABILITY.md).

Example:
  ssi daemon --data-dir /var/lib/ssi`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		dir := dataDirFlag(fs)
		socket := socketFlag(fs)
		listen := fs.String("listen", "", "TLS listen address (default: the node's IP and the cluster port)")
		pidFile := fs.String("pid-file", "", "write the daemon's PID here")
		level := fs.String("log-level", "info", "debug, info, warn or error")
		raftHB := fs.Duration("raft-heartbeat-timeout", node.DefaultRaftHeartbeatTimeout, "Raft follower heartbeat timeout (raise for large or slow clusters)")
		raftEl := fs.Duration("raft-election-timeout", node.DefaultRaftElectionTimeout, "Raft election timeout")
		criuPath := fs.String("criu", "", "the criu binary migration uses (default: $SSI_CRIU, then "+migrate.DefaultCRIUPrefix+"/bin/criu, then criu in PATH)")
		postCopyAbove := fs.Int64("postcopy-above", migrate.DefaultPostCopyAbove>>20, "move jobs of at least this many MiB with post-copy (CRIU lazy pages) unless migrate says otherwise; 0: never (docs/MIGRATION.md, Post-copy)")
		cfsMount := fs.String("cfs-mount", cfs.DefaultMount, "where this node mounts the cluster filesystem ('' for none)")
		cfsExport := fs.String("cfs-export", cfs.DefaultExport, "the directory the serving node exports as the cluster filesystem")
		cfsServer := fs.Uint("cfs-server", cfs.DefaultServer, "the node that serves the cluster filesystem")
		cfsJobRoot := fs.Bool("cfs-job-root", false, "run this node's jobs with the cluster filesystem as their /, whatever the cluster setting (ssi cfs jobroot)")
		metricsAddr := fs.String("metrics-listen", metrics.Auto, "serve Prometheus /metrics here (host:port; 'auto': this node's loopback address, else 127.0.0.1, port 7471; '' for none)")
		webAddr := fs.String("web-listen", web.Auto, "serve the web dashboard here (host:port; 'auto': this node's loopback address, else 127.0.0.1, port 7480; '' for none); docs/OBSERVABILITY.md")
		execStreams := fs.String("exec-streams", envOr("SSI_EXEC_STREAMS", "rpc"), "how this node relays exec streams to other nodes: rpc (pooled Connect streams: fastest start) or own (a TLS connection of its own per stream: about 2x the bulk throughput, one handshake per exec); default $SSI_EXEC_STREAMS, else rpc (docs/PERFORMANCE.md)")
		loadSrc := fs.String("load-source", node.LoadMachine, "what the node's load counts: machine (the whole machine) or jobs (only the processes this node runs; for nodes sharing one kernel)")
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if *execStreams != "rpc" && *execStreams != "own" {
			return Usagef("--exec-streams %q: want rpc or own", *execStreams)
		}
		pcAbove := *postCopyAbove << 20
		switch {
		case *postCopyAbove < 0:
			return Usagef("--postcopy-above %d: want a size in MiB, or 0 for never", *postCopyAbove)
		case *postCopyAbove == 0:
			pcAbove = -1
		}
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(*level)); err != nil {
			return Usagef("--log-level: %v", err)
		}
		log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: lv}))
		slog.SetDefault(log)
		// Descriptors the daemon inherited beyond stdio (a shell's or a
		// service manager's) must not reach the jobs: a job holding a file
		// of the node's launcher could not be checkpointed, and would keep
		// that file open for as long as it runs.
		if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
			log.Warn("cannot mark inherited file descriptors close-on-exec; jobs may inherit them", "err", err)
		}
		ctx, stop := signal.NotifyContext(env.Ctx, syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
		// A data directory that holds no node (node.ErrNotInitialized) is a
		// plain local error: exit 1 (see errors.go).
		err := node.Run(ctx, node.Options{DataDir: node.DataDir(*dir), Socket: *socket, Listen: *listen, PIDFile: *pidFile, Log: log, Load: *loadSrc, CRIU: *criuPath, PostCopyAbove: pcAbove, OwnExecStreams: *execStreams == "own", Metrics: *metricsAddr, Web: *webAddr,
			Raft: node.RaftTiming{HeartbeatTimeout: *raftHB, ElectionTimeout: *raftEl},
			CFS:  node.CFSOptions{Mount: *cfsMount, Export: *cfsExport, Server: uint32(*cfsServer), JobRoot: *cfsJobRoot}})
		if errors.Is(err, state.ErrHalted) {
			// The node met a log entry of a newer ssi: restarting would
			// halt again (the unit does not restart on this status).
			return &ExitError{Code: ExitUpgrade, Err: err}
		}
		return err
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "join",
		Summary: "join this machine to a cluster with a token from ssi-addnode",
		Usage:   "ssi join --server IP[:PORT] --token TOKEN [--hwaddr MAC] [--data-dir DIR]",
		Help: `Contacts any member, proves the right to join with the token, checks the
cluster's CA against the token's fingerprint, and receives this node's
number, name and certificate (its key is generated here and never sent).
The cluster recognises the machine by its MAC, which defaults to the MAC of
the interface of the default route. Then start the node with 'ssi daemon'.

Example:
  ssi join --server 192.168.64.141 --token SSI1-...
  ssi daemon`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		server := fs.String("server", "", "IP[:PORT] of any cluster member (required)")
		token := fs.String("token", "", "the join token printed by ssi-addnode (required; or SSI_TOKEN)")
		hw := fs.String("hwaddr", "", "this machine's MAC address (default: the default route's interface)")
		dir := dataDirFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if *token == "" {
			*token = os.Getenv("SSI_TOKEN")
		}
		if *server == "" || *token == "" {
			return Usagef("--server and --token are required")
		}
		if _, err := pki.ParseToken(*token); err != nil {
			return Usagef("--token: %v", err)
		}
		mac := *hw
		if mac == "" {
			var err error
			if mac, err = primaryMAC(); err != nil {
				return Usagef("--hwaddr not given and %v", err)
			}
		}
		if _, err := nodeaddr.ParseMAC(mac); err != nil {
			return Usagef("--hwaddr: %v", err)
		}
		ctx, cancel := context.WithTimeout(env.Ctx, 60*time.Second)
		defer cancel()
		m, err := node.Join(ctx, node.JoinOptions{DataDir: node.DataDir(*dir), Server: *server, Token: *token, HWAddr: mac})
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "joined cluster %s as node %d (%s, %s)\nstart it with: ssi daemon --data-dir %s\n", m.ClusterName, m.Num, m.Name, m.IPAddr, *dir)
		return nil
	}
	Register(cmd)
}

// primaryMAC is the MAC of the interface that carries the default route.
func primaryMAC() (string, error) {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return "", fmt.Errorf("cannot read the routing table: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == "00000000" {
			ifc, err := net.InterfaceByName(f[0])
			if err == nil && len(ifc.HardwareAddr) == 6 {
				return ifc.HardwareAddr.String(), nil
			}
		}
	}
	return "", errors.New("this machine has no default route with a MAC address; pass --hwaddr")
}

func init() {
	cmd := &Command{
		Name:    "addnode",
		Aliases: []string{"ssi-addnode"},
		Summary: "register a node (or many) by MAC and IP; prints its number and join token",
		Usage:   "ssi-addnode --hwaddr=MAC --ipaddr=IP [--nodename NAME] [--nodenum N] [--xennode] | ssi-addnode --from FILE | ssi-addnode --count K --hwaddr-base MAC --ipaddr-base IP [--xennode [--images DIR] [--swap-size 64M]]",
		Help: `Registers a node in the node table on any member and prints its number and
a join token for 'ssi join'. When --nodename is missing and stdin is a
terminal, asks for the name (default <prefix><num>). --from FILE registers
many nodes in one replicated change, all or none: one "MAC IP [NAME]" per
line, # starts a comment.

--count K registers K nodes with sequential MACs and IPs from --hwaddr-base
and --ipaddr-base (the how-to's D2, D3, ...), numbered from the next free
number and named <prefix><num>; any clash with the node table refuses the
whole batch. With --xennode it then creates each node's swap image and
guest configuration under --images (as ssi images swap and ssi xen-config
--write do; --with-token puts each node's token on its kernel command
line). If that fails, the nodes are removed again: all or nothing.

Examples:
  ssi-addnode --xennode --hwaddr=0A:00:00:00:11:D2 --ipaddr=192.168.64.142
  ssi-addnode --from nodes.txt
  ssi-addnode --count 3 --hwaddr-base 0a:00:00:00:11:d2 --ipaddr-base 192.168.64.142 --xennode --swap-size 64M`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		hw := fs.String("hwaddr", "", "the node's MAC address")
		ip := fs.String("ipaddr", "", "the node's IP address")
		name := fs.String("nodename", "", "the node's name (default <prefix><num>)")
		num := nodeNumFlag(fs, "nodenum", "the node's number (default: the next free one)")
		xen := fs.Bool("xennode", false, "the node is a Xen guest")
		from := fs.String("from", "", "register every node listed in FILE (MAC IP [NAME] per line)")
		ttl := ttlFlag(fs, "token-ttl", node.DefaultTokenTTL, "how long the join tokens stay valid (at least 1s)")
		asJSON := fs.Bool("json", false, "print JSON")
		socket := socketFlag(fs)
		count := fs.Int("count", 0, "register this many nodes with sequential MACs and IPs (with --hwaddr-base, --ipaddr-base)")
		hwBase := fs.String("hwaddr-base", "", "with --count: the first node's MAC address")
		ipBase := fs.String("ipaddr-base", "", "with --count: the first node's IP address")
		swapSize := fs.String("swap-size", "64M", "with --count --xennode: size of each node's swap image")
		force := fs.Bool("force", false, "with --count --xennode: replace existing swap images and configurations")
		withToken := fs.Bool("with-token", false, "with --count --xennode: put each node's join token on its kernel command line (files readable by their owner only)")
		guest := addGuestFlags(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return Usagef("unexpected argument %q", fs.Arg(0))
		}
		bulkOnly := []string{"hwaddr-base", "ipaddr-base", "swap-size", "force", "with-token", "images", "kernel", "ramdisk", "memory", "format", "bridge", "root-device", "extra"}
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		if given["count"] {
			for _, f := range []string{"hwaddr", "ipaddr", "nodename", "nodenum", "from"} {
				if given[f] {
					return Usagef("--count registers numbered, named nodes from --hwaddr-base/--ipaddr-base; it does not go with --%s", f)
				}
			}
			if !*xen {
				for _, f := range bulkOnly[2:] {
					if given[f] {
						return Usagef("--%s is about the nodes' swap images and configurations: it needs --xennode", f)
					}
				}
			}
			return addNodesBulk(env, bulkAdd{count: *count, hwBase: *hwBase, ipBase: *ipBase, xen: *xen, force: *force, token: *withToken,
				swapSize: *swapSize, guest: guest, ttl: *ttl, asJSON: *asJSON, socket: *socket})
		}
		for _, f := range bulkOnly {
			if given[f] {
				return Usagef("--%s goes with --count", f)
			}
		}
		var specs []*ssiv1.NodeSpec
		switch {
		case *from != "" && (*hw != "" || *ip != ""):
			return Usagef("use either --from or --hwaddr/--ipaddr")
		case *from != "":
			var err error
			if specs, err = readNodeFile(*from, *xen); err != nil {
				return err
			}
		default:
			if *hw == "" || *ip == "" {
				return Usagef("--hwaddr and --ipaddr are required")
			}
			mac, err := nodeaddr.ParseMAC(*hw)
			if err != nil {
				return Usagef("--hwaddr: %v", err)
			}
			addr, err := nodeaddr.ParseIP(*ip)
			if err != nil {
				return Usagef("--ipaddr: %v", err)
			}
			if *name != "" {
				if err := state.ValidNodeName(*name); err != nil {
					return Usagef("--nodename: %v", err)
				}
			}
			specs = []*ssiv1.NodeSpec{{Hwaddr: mac, Ipaddr: addr.String(), Name: *name, Num: uint32(*num), Xen: *xen}}
			if *name == "" {
				if f, ok := env.Stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					pnum, pname, err := promptName(env, *socket, uint32(*num))
					if err != nil {
						return err
					}
					specs[0].Num, specs[0].Name = pnum, pname
				}
			}
		}
		resp, err := control(*socket).AddNodes(env.Ctx, connect.NewRequest(&ssiv1.AddNodesRequest{Nodes: specs, TokenTtlSeconds: int64(ttl.Seconds())}))
		if err != nil {
			return err
		}
		if *asJSON {
			type added struct {
				Num    uint32 `json:"num"`
				Name   string `json:"name"`
				HWAddr string `json:"hwaddr"`
				IPAddr string `json:"ipaddr"`
				Token  string `json:"token"`
			}
			var out []added
			for _, a := range resp.Msg.Nodes {
				out = append(out, added{a.Node.Num, a.Node.Name, a.Node.Hwaddr, a.Node.Ipaddr, a.Token})
			}
			return writeJSON(env.Stdout, out)
		}
		for _, a := range resp.Msg.Nodes {
			fmt.Fprintf(env.Stdout, "node %d %s %s %s token %s\n", a.Node.Num, a.Node.Name, a.Node.Hwaddr, a.Node.Ipaddr, a.Token)
		}
		if len(resp.Msg.Nodes) == 1 {
			fmt.Fprintf(env.Stderr, "on the new machine run: ssi join --server <any member's IP> --token %s\n", resp.Msg.Nodes[0].Token)
		}
		return nil
	}
	Register(cmd)
}

// promptName asks for the new node's name on the terminal, offering
// <prefix><num>. num is --nodenum, or 0 for the number the cluster assigns
// next: its counter (ProvisionInfo's NextNum; numbers of removed nodes are
// not reused), not the highest number in the table plus one. The number
// shown is returned and registered as given, so the node gets exactly the
// number (and default name) the prompt offered; if another ssi-addnode takes
// it meanwhile, the cluster refuses instead of numbering the node otherwise.
func promptName(env *Env, socket string, num uint32) (uint32, string, error) {
	info, err := provisionInfo(env, socket)
	if err != nil {
		return 0, "", err
	}
	if info.NamePrefix == "" || info.NextNum == 0 {
		return 0, "", fmt.Errorf("cluster %q is not created yet on this node; try again once 'cluster -V' shows it", info.ClusterName)
	}
	if num == 0 {
		num = info.NextNum
	}
	def := fmt.Sprintf("%s%d", info.NamePrefix, num)
	fmt.Fprintf(env.Stdout, "Enter a name for node %d [%s]: ", num, def)
	line, err := bufio.NewReader(env.Stdin).ReadString('\n')
	if err != nil && line == "" {
		return num, def, nil
	}
	line = strings.TrimSpace(line)
	if line == "" {
		return num, def, nil
	}
	if err := state.ValidNodeName(line); err != nil {
		return 0, "", Usagef("%v", err)
	}
	return num, line, nil
}

func readNodeFile(path string, xen bool) ([]*ssiv1.NodeSpec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, Usagef("--from: %v", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && !st.Mode().IsRegular() {
		return nil, Usagef("--from %s: not a regular file", path)
	}
	var out []*ssiv1.NodeSpec
	seen := map[string]int{} // MAC, IP and name, to the line that gave them
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) < 2 || len(fields) > 3 {
			return nil, Usagef("%s:%d: expected \"MAC IP [NAME]\"", path, line)
		}
		mac, err := nodeaddr.ParseMAC(fields[0])
		if err != nil {
			return nil, Usagef("%s:%d: %v", path, line, err)
		}
		ip, err := nodeaddr.ParseIP(fields[1])
		if err != nil {
			return nil, Usagef("%s:%d: %v", path, line, err)
		}
		s := &ssiv1.NodeSpec{Hwaddr: mac, Ipaddr: ip.String(), Xen: xen}
		if len(fields) == 3 {
			if err := state.ValidNodeName(fields[2]); err != nil {
				return nil, Usagef("%s:%d: %v", path, line, err)
			}
			s.Name = fields[2]
		}
		for _, k := range []string{"MAC " + s.Hwaddr, "IP " + s.Ipaddr, "name " + s.Name} {
			if k == "name " {
				continue
			}
			if first, dup := seen[k]; dup {
				return nil, Usagef("%s:%d: %s is given on line %d already", path, line, k, first)
			}
			seen[k] = line
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, Usagef("--from %s: a line is longer than %d bytes; expected \"MAC IP [NAME]\" per line", path, bufio.MaxScanTokenSize)
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, Usagef("%s lists no nodes", path)
	}
	return out, nil
}

func init() {
	cmd := &Command{
		Name:    "token",
		Summary: "issue a new join token for a registered node",
		Usage:   "ssi token N [--token-ttl 24h] [--socket PATH]",
		Help:    "Replaces node N's join token (for example when it expired, or the node lost its data).\n\nExample:\n  ssi token 4",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		ttl := ttlFlag(fs, "token-ttl", node.DefaultTokenTTL, "how long the token stays valid (at least 1s)")
		socket := socketFlag(fs)
		arg, err := parseOne(env, cmd, fs, args, "a node number")
		if err != nil {
			return err
		}
		num, err := parseNodeNum(arg)
		if err != nil {
			return err
		}
		resp, err := control(*socket).IssueToken(env.Ctx, connect.NewRequest(&ssiv1.TokenRequest{Num: num, TokenTtlSeconds: int64(ttl.Seconds())}))
		if err != nil {
			return err
		}
		fmt.Fprintln(env.Stdout, resp.Msg.Token)
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "rmnode",
		Summary: "remove a node that is DOWN or NEVERUP from the node table",
		Usage:   "ssi rmnode N [--socket PATH]",
		Help:    "Its number is not reused unless given explicitly with ssi-addnode --nodenum.\n\nExample:\n  ssi rmnode 5",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		arg, err := parseOne(env, cmd, fs, args, "a node number")
		if err != nil {
			return err
		}
		num, err := parseNodeNum(arg)
		if err != nil {
			return err
		}
		_, err = control(*socket).RemoveNode(env.Ctx, connect.NewRequest(&ssiv1.RemoveNodeRequest{Num: num}))
		return err
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "clusternode_shutdown",
		Link:    true,
		Summary: "take one node out of the cluster gracefully (default: this node)",
		Usage:   "clusternode_shutdown [--drain] [--socket PATH] [N]",
		Help: `The node goes GOINGDOWN, hands over leadership if it leads, is recorded
DOWN, and its daemon exits; the rest of the cluster keeps running. Its
jobs end with it, unless --drain: every job first moves to the
least-loaded other node (as 'ssi node expel N'), and if one cannot move
(pinned, a terminal, ...) the node stays up and the command says which
(exit 1).

Example:
  clusternode_shutdown 3
  clusternode_shutdown --drain 3`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		drain := fs.Bool("drain", false, "move every job away first; stay up if one cannot move")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		var num uint32
		if fs.NArg() > 1 {
			return Usagef("expected at most one node number")
		}
		if fs.NArg() == 1 {
			var err error
			if num, err = parseNodeNum(fs.Arg(0)); err != nil {
				return err
			}
		}
		if *drain {
			if err := expel(env, *socket, num); err != nil {
				return err
			}
		}
		resp, err := control(*socket).Shutdown(env.Ctx, connect.NewRequest(&ssiv1.ShutdownRequest{Num: num}))
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "node %s is down\n", joinNums(resp.Msg.Stopped))
		return nil
	}
	Register(cmd)
}

func joinNums(ns []uint32) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(int(n))
	}
	return strings.Join(s, " ")
}

func init() {
	cmd := &Command{
		Name:    "shutdown",
		Summary: "stop the whole cluster (every node)",
		Usage:   "ssi shutdown --cluster [--yes] [--socket PATH]",
		Help: `As in OpenSSI, where a plain shutdown stopped the whole cluster: every node
is recorded DOWN in one agreed change and every daemon exits. Asks for
confirmation unless --yes. To stop one node use clusternode_shutdown.

Example:
  ssi shutdown --cluster --yes`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		all := fs.Bool("cluster", false, "stop every node (required)")
		yes := fs.Bool("yes", false, "do not ask for confirmation")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if !*all {
			return Usagef("--cluster is required (to stop one node use clusternode_shutdown)")
		}
		if !*yes {
			st, err := status(env, *socket, false)
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "Stop all %d nodes of cluster %s? [y/N] ", len(st.Nodes), st.ClusterName)
			line, _ := bufio.NewReader(env.Stdin).ReadString('\n')
			if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
				return errors.New("not confirmed; nothing was stopped")
			}
		}
		resp, err := control(*socket).Shutdown(env.Ctx, connect.NewRequest(&ssiv1.ShutdownRequest{Cluster: true}))
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "stopped nodes %s\n", joinNums(resp.Msg.Stopped))
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "install-links",
		Summary: "create the OpenSSI command names as symlinks to ssi",
		Usage:   "ssi install-links DIR",
		Help:    "Example:\n  sudo ssi install-links /usr/local/bin",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return Usagef("expected a directory")
		}
		dir := fs.Arg(0)
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the ssi binary: %w", err)
		}
		if abs, err := filepath.Abs(dir); err == nil && filepath.Dir(self) == abs {
			self = filepath.Base(self) // same directory: keep the link relative
		}
		for _, name := range LinkNames() {
			p := filepath.Join(dir, name)
			if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink == 0 {
				return fmt.Errorf("%s exists and is not a symlink; not replacing it", p)
			}
			_ = os.Remove(p)
			if err := os.Symlink(self, p); err != nil {
				return fmt.Errorf("create %s: %w", p, err)
			}
		}
		fmt.Fprintf(env.Stdout, "linked %s in %s\n", strings.Join(LinkNames(), " "), dir)
		return nil
	}
	Register(cmd)
}

// LinkNames are the OpenSSI command names ssi answers to through symlinks.
func LinkNames() []string {
	var out []string
	for name, c := range commands {
		if name != c.Name || c.Link {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// envOr is the environment variable's value, or def when it is unset.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
