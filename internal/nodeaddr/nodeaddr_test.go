package nodeaddr

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseMAC(t *testing.T) {
	good := map[string]string{
		"0A:00:00:00:11:D2": "0a:00:00:00:11:d2", "0a-00-00-00-11-d2": "0a:00:00:00:11:d2",
		" 02:42:ac:11:00:02 ": "02:42:ac:11:00:02", "0a00.0000.11d2": "0a:00:00:00:11:d2",
	}
	for in, want := range good {
		got, err := ParseMAC(in)
		if err != nil || got != want {
			t.Errorf("ParseMAC(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0a:00:00:00:11", "0a:00:00:00:11:d2:00", "0g:00:00:00:11:d2", "ff:ff:ff:ff:ff:ff",
		"01:00:5e:00:00:01", "00:00:00:00:00:00", "00:00:00:00:00:00:00:00", "0a:00:00:00:11:d2:00:00:00:00:00:00:00:00:00:00:00:00:00:00"} {
		if _, err := ParseMAC(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMAC(%q) accepted", in)
		}
	}
}

func TestParseIP(t *testing.T) {
	for in, want := range map[string]string{"192.168.64.142": "192.168.64.142", " 10.0.0.1": "10.0.0.1", "::ffff:10.1.2.3": "10.1.2.3", "fd00::1": "fd00::1"} {
		got, err := ParseIP(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseIP(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0", "10.0.0.256", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "fe80::1%eth0", "host.example", "10.0.0.1/24"} {
		if _, err := ParseIP(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseIP(%q) accepted", in)
		}
	}
}

func TestNextMACAndIP(t *testing.T) {
	if got, _ := NextMAC("0a:00:00:00:11:d1", 1); got != "0a:00:00:00:11:d2" {
		t.Errorf("NextMAC = %s", got)
	}
	if got, _ := NextMAC("0a:00:00:00:11:ff", 2); got != "0a:00:00:00:12:01" {
		t.Errorf("NextMAC carry = %s", got)
	}
	if _, err := NextMAC("fe:ff:ff:ff:ff:ff", 1); err == nil {
		t.Errorf("NextMAC past the end accepted")
	}
	if got, _ := NextIP(netip.MustParseAddr("10.0.0.254"), 3); got.String() != "10.0.1.1" {
		t.Errorf("NextIP = %s", got)
	}
	if _, err := NextIP(netip.MustParseAddr("255.255.255.254"), 2); err == nil {
		t.Errorf("NextIP past the end accepted")
	}
}

func FuzzParseMAC(f *testing.F) {
	for _, s := range []string{"0A:00:00:00:11:D2", "0a-00-00-00-11-d2", "0a00.0000.11d2", "ff:ff:ff:ff:ff:ff", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mac, err := ParseMAC(s)
		if err != nil {
			return
		}
		// Canonical output parses to itself.
		again, err := ParseMAC(mac)
		if err != nil || again != mac || len(mac) != 17 {
			t.Fatalf("ParseMAC(%q) = %q, reparsed %q %v", s, mac, again, err)
		}
	})
}

func FuzzParseIP(f *testing.F) {
	for _, s := range []string{"192.168.64.142", "::1", "10.0.0.256", "fe80::1%eth0", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ip, err := ParseIP(s)
		if err != nil {
			return
		}
		again, err := ParseIP(ip.String())
		if err != nil || again != ip {
			t.Fatalf("ParseIP(%q) = %v, reparsed %v %v", s, ip, again, err)
		}
	})
}
