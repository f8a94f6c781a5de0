package cvip

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
)

func TestSlotsFollowTheWeightsInterleaved(t *testing.T) {
	eps := []endpoint{{Num: 2, Weight: 3}, {Num: 3, Weight: 1}}
	if got := fmt.Sprint(slots(eps)); got != "[0 0 1 0]" && got != "[0 1 0 0]" {
		t.Errorf("weights 3:1 give slots %s, want three of 0 and one of 1, interleaved", got)
	}
	if got := slots(nil); got != nil {
		t.Errorf("no endpoints: %v", got)
	}
	// Many heavy endpoints are scaled into maxSlots, each keeping a slot.
	var many []endpoint
	for i := range 64 {
		many = append(many, endpoint{Num: uint32(i + 1), Weight: 100})
	}
	many[0].Weight = 1
	s := slots(many)
	count := map[int]int{}
	for _, i := range s {
		count[i]++
	}
	if len(s) > maxSlots || len(count) != 64 || count[0] != 1 {
		t.Errorf("64 endpoints: %d slots, %d endpoints with a slot, the light one has %d", len(s), len(count), count[0])
	}
}

func TestWeightsBySchedulers(t *testing.T) {
	wrr := &state.VIP{Sched: state.SchedWRR, Weights: map[uint32]uint32{2: 7}}
	if weightFor(wrr, 2, 0, 0, 0) != 7 || weightFor(wrr, 3, 0, 0, 0) != 1 {
		t.Errorf("wrr weights")
	}
	load := &state.VIP{Sched: state.SchedLoad}
	idle, busy := weightFor(load, 2, 0, 4, 0), weightFor(load, 3, 8, 4, 0)
	if idle != state.MaxWeight || busy >= idle/4 || busy < 1 {
		t.Errorf("load: idle node %d, node with 2 runnable per CPU %d", idle, busy)
	}
	lc := &state.VIP{Sched: state.SchedLC}
	if weightFor(lc, 2, 0, 0, 0) != 100 || weightFor(lc, 2, 0, 0, 9) != 10 || weightFor(lc, 2, 0, 0, -1) != 1 {
		t.Errorf("lc weights: %d %d", weightFor(lc, 2, 0, 0, 0), weightFor(lc, 2, 0, 0, 9))
	}
}

func TestNextDirector(t *testing.T) {
	c := &state.Cluster{Nodes: map[uint32]*state.Node{
		1: {Num: 1, State: state.Up}, 2: {Num: 2, State: state.Up}, 3: {Num: 3, State: state.Down},
	}}
	for name, tc := range map[string]struct {
		v    state.VIP
		want uint32
		ok   bool
	}{
		"none yet: the first UP":          {state.VIP{}, 1, true},
		"keeps an UP director":            {state.VIP{Director: 2}, 0, false},
		"a DOWN director is replaced":     {state.VIP{Director: 3}, 1, true},
		"in the directors' order":         {state.VIP{Directors: []uint32{3, 2, 1}}, 2, true},
		"a director off the list moves":   {state.VIP{Director: 1, Directors: []uint32{2}}, 2, true},
		"nobody can: none":                {state.VIP{Director: 3, Directors: []uint32{3}}, 0, true},
		"nobody can and none is: nothing": {state.VIP{Directors: []uint32{3}}, 0, false},
		"an unknown director is replaced": {state.VIP{Director: 9}, 1, true},
	} {
		got, ok := nextDirector(c, &tc.v)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %d %v, want %d %v", name, got, ok, tc.want, tc.ok)
		}
	}
}

// backend answers its name and what it read on every connection.
func backend(t *testing.T, name string) *net.TCPAddr {
	t.Helper()
	return serveConns(t, "127.0.0.1:0", func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		fmt.Fprintf(c, "%s %s", name, buf[:n])
	}).(*net.TCPAddr)
}

func TestUserspaceProxySplicesToTheBackendsInTurn(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	vip := &state.VIP{Addr: "127.0.0.1", Port: 0, Proto: "tcp", Sched: state.SchedRR}
	if _, err := startProxy(vip, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "every port") {
		t.Fatalf("a VIP of every port in user space: %v", err)
	}
	// Find a free port for the VIP.
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	vip.Port = uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	p, err := startProxy(vip, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	ask := func() string {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", vip.Port), time.Second)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprint(c, "hi")
		_ = c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		return string(got)
	}
	if got := ask(); got != "" && !strings.Contains(got, "reset") {
		t.Errorf("with no backend the proxy answered %q, want a reset", got)
	}
	p.setEndpoints([]endpoint{{Num: 2, Addr: "127.0.0.1", Port: uint16(a.Port), Weight: 1}, {Num: 3, Addr: "127.0.0.1", Port: uint16(b.Port), Weight: 1}})
	got := map[string]int{}
	for range 10 {
		got[ask()]++
	}
	if got["a hi"] != 5 || got["b hi"] != 5 {
		t.Errorf("10 connections round robin: %v", got)
	}
	// The relay counts down once both directions are done, just after
	// the client has read the end.
	for deadline := time.Now().Add(5 * time.Second); p.activeConns(2)+p.activeConns(3) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still counted after they closed", p.activeConns(2)+p.activeConns(3))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHealthCheckerTakesAFailedBackendOutAndBack(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	woken := make(chan struct{}, 16)
	c := newChecker("", func() { woken <- struct{}{} })
	defer c.stop()
	tg := target{Num: 2, Addr: addr}
	if ok, _ := c.healthy(tg); ok {
		t.Fatal("healthy before any check")
	}
	c.setTargets([]target{tg})
	wait := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if ok, why := c.healthy(tg); ok == want {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("backend healthy=%v (%s), want %v", ok, why, want)
			}
			select {
			case <-woken:
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	wait(true)
	l.Close()
	wait(false)
	if _, why := c.healthy(tg); !strings.Contains(why, "in a row") {
		t.Errorf("reason %q", why)
	}
}

func TestHTTPProbe(t *testing.T) {
	addr := serveConns(t, "127.0.0.1:0", func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 512)
		n, _ := c.Read(buf)
		status := "503 Service Unavailable"
		if strings.HasPrefix(string(buf[:n]), "GET /ok ") {
			status = "200 OK"
		}
		fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n", status)
	}).String()
	if err := probe(t.Context(), addr, "/ok"); err != nil {
		t.Errorf("GET /ok: %v", err)
	}
	if err := probe(t.Context(), addr, "/bad"); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("GET /bad: %v", err)
	}
}

func TestUserspaceProxyRelaysUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bport := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	udpEcho(t, fmt.Sprintf("127.0.0.1:%d", bport), "udp-backend")
	pc, _ = net.ListenPacket("udp4", "127.0.0.1:0")
	vport := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	vip := &state.VIP{Addr: "127.0.0.1", Port: uint16(vport), Proto: "udp", Sched: state.SchedRR}
	p, err := startProxy(vip, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	p.setEndpoints([]endpoint{{Num: 2, Addr: "127.0.0.1", Port: uint16(bport), Weight: 1}})
	if got := askUDP(t, fmt.Sprintf("127.0.0.1:%d", vport)); got != "udp-backend" {
		t.Errorf("a datagram through the proxy: %q", got)
	}
}

func TestParseKey(t *testing.T) {
	for key, want := range map[string]string{
		"10.0.0.1:80/tcp": "10.0.0.1 80 tcp true",
		"10.0.0.1:*/udp":  "10.0.0.1 0 udp true",
		"10.0.0.1/tcp":    "invalid IP 0  false",
	} {
		a, p, proto, ok := parseKey(key)
		if got := fmt.Sprintln(a, p, proto, ok); got != want+"\n" {
			t.Errorf("parseKey(%q) = %s, want %s", key, got, want)
		}
	}
	v := &state.VIP{Addr: "10.0.0.1", Proto: "udp"}
	if a, p, proto, ok := parseKey(v.Key()); !ok || a.String() != v.Addr || p != 0 || proto != "udp" {
		t.Errorf("the key of %+v does not parse back", v)
	}
}

func TestMetricsArePresentWithNothingDirected(t *testing.T) {
	s := New(Config{Self: 1})
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatal(err)
	}
	s.status["10.0.0.1:80/tcp"] = &ssiv1.VIPStatus{Key: "10.0.0.1:80/tcp", Datapath: "nftables",
		Backends: []*ssiv1.Backend{{Num: 2, Healthy: true}, {Num: 3}}}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			key := mf.GetName()
			for _, l := range m.Label {
				key += "," + l.GetValue()
			}
			got[key] = m.Gauge.GetValue()
		}
	}
	want := map[string]float64{
		"ssi_cvip_directed,nftables": 1, "ssi_cvip_directed,userspace": 0,
		"ssi_cvip_backends,healthy": 1, "ssi_cvip_backends,unhealthy": 1, "ssi_cvip_proxy_connections": 0,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("metrics %v, want %v", got, want)
	}
}
