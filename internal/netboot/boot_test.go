package netboot

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
)

func TestStepAndRescue(t *testing.T) {
	var b strings.Builder
	con := &Console{W: &b, Uptime: func() time.Duration { return 1500 * time.Millisecond }}
	if err := con.Step("first", "", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	err := con.Step("DHCP on eth0", "is the MAC registered?", func() error { return errors.New("no answer") })
	var fl *Failure
	if !errors.As(err, &fl) || fl.Step != "DHCP on eth0" || fl.Hint != "is the MAC registered?" {
		t.Fatalf("failure %#v", err)
	}
	// A step's own *Failure keeps its better hint.
	err = con.Step("join", "generic", func() error { return &Failure{Step: "join", Err: errors.New("x"), Hint: "specific"} })
	if !errors.As(err, &fl) || fl.Hint != "specific" {
		t.Fatalf("failure %#v", err)
	}
	out := b.String()
	for _, w := range []string{"[   1.500] ssi-boot: first ...", "first: ok (", "DHCP on eth0: FAILED after"} {
		if !strings.Contains(out, w) {
			t.Errorf("console lacks %q:\n%s", w, out)
		}
	}
	r := RescueText(&Failure{Step: "DHCP on eth0", Err: errors.New("no answer"), Hint: "is the MAC registered?"})
	for _, w := range []string{"RESCUE", "failed step: DHCP on eth0", "reason:      no answer", "check:       is the MAC registered?", "no kernel panic"} {
		if !strings.Contains(r, w) {
			t.Errorf("rescue text lacks %q:\n%s", w, r)
		}
	}
}

func TestJoinHint(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{connect.NewError(connect.CodePermissionDenied, errors.New("bad token")), "refused the join token"},
		{connect.NewError(connect.CodeFailedPrecondition, errors.New("mac")), "MAC"},
		{connect.NewError(connect.CodeUnavailable, fmt.Errorf("dial tcp: connection refused")), "cannot reach the cluster at 10.0.0.1:7470"},
		{errors.New("tls: failed to verify certificate"), "not of the token's cluster"},
	} {
		if h := joinHint("10.0.0.1:7470", c.err); !strings.Contains(h, c.want) {
			t.Errorf("%v: hint %q, want %q", c.err, h, c.want)
		}
	}
}
