package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/web"
)

// The views of the cluster: ssi events, ssi dashboard (ssi top is in top.go).

func observe(socket string) ssiv1connect.ObserveClient {
	return ssiv1connect.NewObserveClient(transport.NewUnixClient(socket), "http://ssi", connect.WithInterceptors(namesLostDaemon(socket)))
}

// eventJSON is one line of ssi events --json.
type eventJSON struct {
	Time     time.Time `json:"time"`
	Index    uint64    `json:"index"`
	Kind     string    `json:"kind"`
	Node     uint32    `json:"node"`
	Name     string    `json:"name,omitempty"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	Reason   string    `json:"reason,omitempty"`
	CPID     int64     `json:"cpid,omitempty"`
	FromNode uint32    `json:"from_node,omitempty"`
}

func printEvent(w io.Writer, e *ssiv1.ClusterEvent, asJSON bool) error {
	t := time.UnixMilli(e.TimeUnixMs)
	if asJSON {
		b, err := json.Marshal(eventJSON{Time: t.UTC(), Index: e.Index, Kind: web.EventKindLabel(e.Kind), Node: e.Node, Name: e.NodeName,
			From: e.From.Label(), To: e.To.Label(), Reason: e.Reason, CPID: e.Cpid, FromNode: e.FromNode})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	node := fmt.Sprintf("node %d", e.Node)
	if e.NodeName != "" {
		node += " (" + e.NodeName + ")"
	}
	what := ""
	switch e.Kind {
	case ssiv1.EventKind_EVENT_KIND_MEMBERSHIP:
		what = fmt.Sprintf("%s -> %s", e.From.Label(), e.To.Label())
	case ssiv1.EventKind_EVENT_KIND_MIGRATION:
		what = "migration"
	default:
		what = "vote"
	}
	line := fmt.Sprintf("%s  %-16s %-22s", t.Format("2006-01-02 15:04:05.000"), node, what)
	if e.Reason != "" {
		line += "  " + e.Reason
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

func init() {
	cmd := &Command{
		Name:    "events",
		Summary: "print the cluster's membership and migration events; -f follows them",
		Usage:   "ssi events [-f] [--json] [-n N] [--socket PATH]",
		Help: `Prints the cluster's history as every node agreed it: nodes changing state
(with the reason), processes that moved (or were restarted) to a node, and
votes that changed hands, each with the leader's time and its log index.
The history holds the last 512. With -f it then prints each new event as
this node applies it, until interrupted. --json prints one JSON object per
line (time, index, kind: membership, migration or voter, node, name, from,
to, reason, cpid, from_node).

Examples:
  ssi events -n 20
  ssi events -f --json | jq -c 'select(.kind == "migration")'`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		follow := fs.Bool("f", false, "follow: print new events as they happen")
		asJSON := fs.Bool("json", false, "print JSON lines")
		last := fs.Uint("n", 0, "only the last N events of the history (0: all)")
		socket := socketFlag(fs)
		if err := parseNone(env, cmd, fs, args); err != nil {
			return err
		}
		if *last > 512 {
			return Usagef("-n %d: the history holds at most 512 events", *last)
		}
		st, err := observe(*socket).Events(env.Ctx, connect.NewRequest(&ssiv1.EventsRequest{Follow: *follow, Last: uint32(*last)}))
		if err != nil {
			return err
		}
		defer st.Close()
		for st.Receive() {
			if err := printEvent(env.Stdout, st.Msg(), *asJSON); err != nil {
				return err
			}
		}
		if err := st.Err(); err != nil {
			if env.Ctx.Err() != nil {
				return nil // interrupted (-f ends so)
			}
			return lostDaemon(*socket, "Events", err)
		}
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "dashboard",
		Summary: "print the web dashboard's address, or issue a token for it",
		Usage:   "ssi dashboard [--json] [--socket PATH] | ssi dashboard token [--read-only] [--ttl 12h] [--socket PATH]",
		Help: `Without arguments, prints where the local daemon serves its web dashboard
and its Prometheus metrics (ssi daemon --web-listen, --metrics-listen).

'ssi dashboard token' issues a token for the dashboard, signed with the
cluster CA's key: every node's dashboard accepts it until it expires (it
cannot be revoked earlier: keep --ttl short). It carries your identity as
this socket sees it; the dashboard acts as you. Without --read-only it may
kill and migrate processes and add nodes, and only root, the daemon's user
and the ssi group get one; --read-only tokens only look. It prints the
token and a URL that signs in with it (the token is in the URL's fragment,
which the browser never sends to the server).

Examples:
  ssi dashboard
  ssi dashboard token --read-only --ttl 1h`,
	}
	cmd.Run = func(env *Env, args []string) error {
		if len(args) > 0 && args[0] == "token" {
			return dashboardToken(env, cmd, args[1:])
		}
		fs := NewFlags(env, cmd)
		asJSON := fs.Bool("json", false, "print JSON")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return Usagef("unknown subcommand %q (did you mean 'ssi dashboard token'?)", fs.Arg(0))
		}
		resp, err := observe(*socket).Dashboard(env.Ctx, connect.NewRequest(&ssiv1.DashboardRequest{}))
		if err != nil {
			return err
		}
		m := resp.Msg
		if *asJSON {
			return writeJSON(env.Stdout, map[string]any{"node": m.Node, "web": m.WebUrl, "metrics": m.MetricsUrl})
		}
		if m.WebUrl == "" {
			fmt.Fprintf(env.Stdout, "node %d serves no dashboard (start its daemon with --web-listen ADDR)\n", m.Node)
		} else {
			fmt.Fprintf(env.Stdout, "%s\n", m.WebUrl)
		}
		if m.MetricsUrl != "" {
			fmt.Fprintf(env.Stderr, "metrics: %s\nsign in with a token from: ssi dashboard token [--read-only]\n", m.MetricsUrl)
		}
		return nil
	}
	Register(cmd)
}

func dashboardToken(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	ro := fs.Bool("read-only", false, "a token that may only look")
	ttl := ttlFlag(fs, "ttl", web.DefaultTokenTTL, "how long the token is valid (at most 720h)")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := parseNone(env, cmd, fs, args); err != nil {
		return err
	}
	if *ttl < time.Minute || *ttl > web.MaxTokenTTL {
		return Usagef("--ttl %v: a dashboard token lives between 1m and %v", *ttl, web.MaxTokenTTL)
	}
	resp, err := observe(*socket).DashboardToken(env.Ctx, connect.NewRequest(&ssiv1.DashboardTokenRequest{ReadOnly: *ro, TtlSeconds: int64(ttl.Seconds())}))
	if err != nil {
		return err
	}
	m := resp.Msg
	if *asJSON {
		return writeJSON(env.Stdout, map[string]any{"token": m.Token, "admin": m.Admin, "expires": time.UnixMilli(m.ExpiresUnixMs).UTC(), "login_url": m.LoginUrl})
	}
	fmt.Fprintln(env.Stdout, m.Token)
	kind := "admin"
	if !m.Admin {
		kind = "read-only"
	}
	fmt.Fprintf(env.Stderr, "a %s dashboard token, valid until %s\n", kind, time.UnixMilli(m.ExpiresUnixMs).Format(time.RFC3339))
	if m.LoginUrl != "" {
		fmt.Fprintf(env.Stderr, "sign in: %s\n", m.LoginUrl)
	}
	return nil
}
