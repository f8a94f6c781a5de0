package cli

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestParseVIPArgAndBackends(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.100":     "10.0.0.100 0 <nil>",
		"10.0.0.100:80":  "10.0.0.100 80 <nil>",
		"10.0.0.100:0":   "error",
		"10.0.0.100:x":   "error",
		"web:80":         "error",
		"10.0.0.100:1e5": "error",
	} {
		a, p, err := parseVIPArg(in)
		got := fmt.Sprint(a, " ", p, " ", err)
		if want == "error" {
			if err == nil {
				t.Errorf("parseVIPArg(%q) = %s, want an error", in, got)
			}
			continue
		}
		if got != want {
			t.Errorf("parseVIPArg(%q) = %s, want %s", in, got, want)
		}
	}
	nodes, weights, err := parseBackends("2:3, 3,4:1")
	if err != nil || fmt.Sprint(nodes) != "[2 3 4]" || fmt.Sprint(weights) != "map[2:3 4:1]" {
		t.Errorf("parseBackends: %v %v %v", nodes, weights, err)
	}
	for _, bad := range []string{"2:0", "2:101", "0", "2:x", "a"} {
		if _, _, err := parseBackends(bad); err == nil {
			t.Errorf("parseBackends(%q) accepted", bad)
		}
	}
}

// Malformed input is refused before anything is sent (no daemon here).
func TestCvipAddRefusesBadInputLocally(t *testing.T) {
	for _, args := range [][]string{
		{"cvip", "add"},
		{"cvip", "add", "10.0.0.100:80", "extra"},
		{"cvip", "add", "10.0.0.100:80", "--sched", "fastest"},
		{"cvip", "add", "10.0.0.100:80", "--proto", "sctp"},
		{"cvip", "add", "127.0.0.5:80"},
		{"cvip", "add", "10.0.0.100:80", "--nodes", "2:4"},
		{"cvip", "add", "10.0.0.100:80", "--datapath", "ebpf"},
		{"cvip", "add", "10.0.0.100:80", "--target-port", "70000"},
		{"cvip", "rm", "10.0.0.100:80", "--proto", "icmp"},
		{"cvip", "frob"},
	} {
		var out, errb bytes.Buffer
		env := &Env{Ctx: t.Context(), Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}
		code := Run(env, append([]string{"ssi"}, append(args, "--socket", "/nonexistent/ssi.sock")...))
		if code != ExitUsage {
			t.Errorf("ssi %v: exit %d, want %d (usage)\n%s", args, code, ExitUsage, errb.String())
		}
	}
}
