package nodeaddr

import "testing"

func TestLoopbackFor(t *testing.T) {
	for ip, want := range map[string]string{
		"127.0.0.3":     "127.0.0.3:7471",
		"10.0.0.1":      "127.0.0.1:7471",
		"192.168.64.14": "127.0.0.1:7471",
		"::1":           "[::1]:7471",
		"":              "127.0.0.1:7471",
	} {
		if got := LoopbackFor(ip, 7471); got != want {
			t.Errorf("LoopbackFor(%q) = %q, want %q", ip, got, want)
		}
	}
}
