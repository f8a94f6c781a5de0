package netboot

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/pki"
)

const testToken = "SSI1-0123456789abcdef0123456789abcdef-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestSplitCmdline(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  a  b\tc\n", []string{"a", "b", "c"}},
		{`a="b c" d`, []string{"a=b c", "d"}},
		{`"x y"z`, []string{"x yz"}},
		{`a="unterminated b`, []string{"a=unterminated b"}},
		{`""`, []string{""}},
	} {
		if got := SplitCmdline(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("SplitCmdline(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	if _, err := pki.ParseToken(testToken); err != nil {
		t.Fatal(err)
	}
	p, err := ParseCmdline("BOOT_IMAGE=/vmlinuz root=/dev/hda1 ro console=ttyS0 ip=192.168.64.142::192.168.64.1:255.255.255.0:ssi2:eth0:off ssi.server=192.168.64.141:7470 ssi.token=" + testToken + " panic=-1")
	if err != nil {
		t.Fatal(err)
	}
	want := Params{Server: "192.168.64.141:7470", Token: testToken, Init: DefaultInit, Timeout: DefaultTimeout}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v, want %+v", p, want)
	}
	p, err = ParseCmdline(`ssi.server=10.0.0.1 ssi.token=` + testToken + ` ssi.hwaddr=0A:53:53:49:00:02 ssi.init=/bin/ssi ssi.timeout=5s ssi.rescue ssi.future=x -- __rootinit "a b"`)
	if err != nil {
		t.Fatal(err)
	}
	if p.Server != "10.0.0.1:7470" || p.HWAddr.String() != "0a:53:53:49:00:02" || p.Init != "/bin/ssi" || p.Timeout != 5*time.Second || !p.Rescue || !reflect.DeepEqual(p.Args, []string{"__rootinit", "a b"}) {
		t.Fatalf("got %+v", p)
	}
	// Words after "--" are init's, not ours.
	if _, err := ParseCmdline("ssi.token=" + testToken + " -- ssi.server=10.0.0.1"); !errors.Is(err, ErrMissing) {
		t.Fatalf("ssi.server after --: %v", err)
	}
	for _, bad := range []string{
		"ssi.server=10.0.0.1:0", "ssi.server=host:7470", "ssi.server=::1", "ssi.server=", "ssi.server=10.0.0.1:99999",
		"ssi.token=SSI1-short", "ssi.hwaddr=zz", "ssi.hwaddr=00:11:22:33:44:55:66:77", "ssi.init=sbin/init",
		"ssi.timeout=0s", "ssi.timeout=2h", "ssi.timeout=x", "ssi.rescue=maybe",
	} {
		_, err := ParseCmdline(bad + " ssi.server=10.0.0.1 ssi.token=" + testToken)
		if err == nil || !strings.Contains(err.Error(), strings.SplitN(bad, "=", 2)[0]) {
			t.Errorf("%s: err %v, want one naming the parameter", bad, err)
		}
	}
	if _, err := ParseCmdline("ssi.server=10.0.0.1"); !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "ssi.token") {
		t.Errorf("no token: %v", err)
	}
	if _, err := ParseCmdline(strings.Repeat("x", MaxCmdline+1)); err == nil {
		t.Error("an oversized command line was accepted")
	}
}

// FuzzParseCmdline: the parser never panics, whatever it accepts is valid,
// and words it does not own change nothing.
func FuzzParseCmdline(f *testing.F) {
	f.Add("ssi.server=10.0.0.1:7470 ssi.token=" + testToken)
	f.Add(`ssi.server="10.0.0.1" ssi.token=` + testToken + ` ssi.hwaddr=0a:00:00:00:00:01 -- x`)
	f.Add(`"ssi.init=/a b" ssi.timeout=1m ssi.rescue=0`)
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCmdline(s)
		if err != nil {
			return
		}
		if _, err := pki.ParseToken(p.Token); err != nil {
			t.Fatalf("accepted token %q: %v", p.Token, err)
		}
		if _, err := parseServer(p.Server); err != nil {
			t.Fatalf("accepted server %q: %v", p.Server, err)
		}
		if !strings.HasPrefix(p.Init, "/") || p.Timeout <= 0 || (p.HWAddr != nil && len(p.HWAddr) != 6) {
			t.Fatalf("accepted %+v", p)
		}
		if len(p.Args) == 0 && !strings.Contains(s, "--") && strings.Count(s, `"`)%2 == 0 && len(s) < MaxCmdline-64 {
			q, err := ParseCmdline(s + " quiet other.param=1")
			if err != nil || !reflect.DeepEqual(p, q) {
				t.Fatalf("unrelated words changed the result: %+v / %+v, %v", p, q, err)
			}
		}
	})
}
