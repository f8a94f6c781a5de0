package cli

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

func TestParseInterspersed(t *testing.T) {
	cmd := &Command{Name: "x", Usage: "x"}
	for _, tc := range []struct {
		args  []string
		pos   []string
		write bool
		size  string
	}{
		{[]string{"a", "--write", "b"}, []string{"a", "b"}, true, ""},
		{[]string{"--size", "4G", "img"}, []string{"img"}, false, "4G"},
		{[]string{"img", "--size", "4G", "--write"}, []string{"img"}, true, "4G"},
		{[]string{"a", "--", "--write", "b"}, []string{"a", "--write", "b"}, false, ""},
		{nil, nil, false, ""},
	} {
		env := &Env{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
		fs := NewFlags(env, cmd)
		write := fs.Bool("write", false, "")
		size := fs.String("size", "", "")
		pos, err := parseInterspersed(env, cmd, fs, tc.args)
		if err != nil || !reflect.DeepEqual(pos, tc.pos) || *write != tc.write || *size != tc.size {
			t.Errorf("%q: pos %q write %v size %q err %v", tc.args, pos, *write, *size, err)
		}
	}
	env := &Env{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
	if _, err := parseInterspersed(env, cmd, NewFlags(env, cmd), []string{"a", "--bogus"}); err == nil {
		t.Errorf("unknown flag after a positional argument accepted")
	}
}

func testStatus() *ssiv1.StatusResponse {
	return &ssiv1.StatusResponse{ClusterName: "ssi1", LeaderNum: 2, Nodes: []*ssiv1.Node{
		{Num: 1, Name: "ssi1", Ipaddr: "192.168.64.141", State: ssiv1.NodeState_NODE_STATE_UP, InitNode: true},
		{Num: 2, Name: "ssi2", Ipaddr: "192.168.64.142", State: ssiv1.NodeState_NODE_STATE_UP},
		{Num: 3, Name: "web", Ipaddr: "192.168.64.143", State: ssiv1.NodeState_NODE_STATE_NEVERUP},
	}}
}

func TestResolveNodes(t *testing.T) {
	st := testStatus()
	nums := func(args ...string) (string, error) {
		ns, err := resolveNodes(st, args)
		var out []string
		for _, n := range ns {
			out = append(out, n.Name)
		}
		return strings.Join(out, " "), err
	}
	for in, want := range map[string]string{"3 1": "web ssi1", "WEB 3 web": "web", "all": "ssi1 ssi2 web", "2 all": "ssi2 ssi1 web"} {
		if got, err := nums(strings.Fields(in)...); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"4", "nosuch", "0"} {
		if _, err := nums(bad); err == nil || !strings.Contains(err.Error(), "not in the node table of cluster ssi1") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestJoinServer(t *testing.T) {
	st := testStatus()
	if s, err := joinServer(st, 7470); err != nil || s != "192.168.64.142:7470" {
		t.Errorf("with an UP leader: %q %v", s, err)
	}
	st.Nodes[1].State = ssiv1.NodeState_NODE_STATE_DOWN // the leader is going: any UP node
	if s, err := joinServer(st, 7470); err != nil || s != "192.168.64.141:7470" {
		t.Errorf("with the leader DOWN: %q %v", s, err)
	}
	st.Nodes[0].State = ssiv1.NodeState_NODE_STATE_DOWN
	if _, err := joinServer(st, 7470); err == nil {
		t.Errorf("no UP node, yet a server")
	}
	st.Nodes[0].State, st.Nodes[0].Ipaddr = ssiv1.NodeState_NODE_STATE_UP, "fd00::1"
	if s, _ := joinServer(st, 7470); s != "[fd00::1]:7470" {
		t.Errorf("IPv6: %q", s)
	}
}
