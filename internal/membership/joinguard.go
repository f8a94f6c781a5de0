package membership

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Join is the only procedure a machine without a cluster certificate can
// call, so it is guarded before anything reaches the log: the node that
// received the request refuses a source or MAC over its failure budget;
// the leader checks the token against its node table (the authoritative
// one: a follower's copy may not have the registration yet) before it
// proposes anything; failures count against the source on the receiving
// node and against the MAC on the leader; and the answer to a refused join
// does not say whether the MAC is registered or what the cluster is
// called.

const (
	// joinFailBurst failed joins are allowed from one source (or for one
	// MAC) at once; then one more per joinFailEvery.
	joinFailBurst = 5
	joinFailEvery = 10 * time.Second
	// maxJoinLimiters bounds the memory the limiters take; past it the
	// oldest half is forgotten.
	maxJoinLimiters = 4096
)

// errJoinRefused is all an unauthenticated caller learns of a bad join.
var errJoinRefused = errors.New("join refused: this token is not valid for this MAC address (is it the token ssi-addnode printed for this machine's MAC, and not expired or used? 'ssi token N' on a member issues a new one)")

type joinGuard struct {
	mu   sync.Mutex
	lims map[string]*joinLimiter
}

type joinLimiter struct {
	lim  *rate.Limiter
	used time.Time
}

func (g *joinGuard) limiter(key string, now time.Time) *rate.Limiter {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lims == nil {
		g.lims = map[string]*joinLimiter{}
	}
	l, ok := g.lims[key]
	if !ok {
		if len(g.lims) >= maxJoinLimiters {
			g.forgetOldest()
		}
		l = &joinLimiter{lim: rate.NewLimiter(rate.Every(joinFailEvery), joinFailBurst)}
		g.lims[key] = l
	}
	l.used = now
	return l.lim
}

// forgetOldest drops the least recently used half of the limiters.
func (g *joinGuard) forgetOldest() {
	var cut time.Time
	times := make([]time.Time, 0, len(g.lims))
	for _, l := range g.lims {
		times = append(times, l.used)
	}
	// the median, roughly: good enough to halve the map
	cut = times[len(times)/2]
	for k, l := range g.lims {
		if !l.used.After(cut) {
			delete(g.lims, k)
		}
	}
}

// blocked reports whether key has used up its failures for now.
func (g *joinGuard) blocked(key string, now time.Time) bool {
	return g.limiter(key, now).TokensAt(now) < 1
}

// failed counts a failed join against key.
func (g *joinGuard) failed(key string, now time.Time) { g.limiter(key, now).AllowN(now, 1) }

// admitted refuses a join from source (or for mac) that has used up its
// failures for now.
func (g *joinGuard) admitted(source, mac string, now time.Time) error {
	for _, k := range []string{"source " + source, "mac " + mac} {
		if k != "source " && g.blocked(k, now) {
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("join refused: too many failed joins from this machine or for this MAC; wait %v and check the token", joinFailEvery))
		}
	}
	return nil
}

// tokenValid reports whether secret is mac's current join token in c.
func tokenValid(c *state.Cluster, mac, secret string, now time.Time) bool {
	n := c.NodeByMAC(mac)
	return n != nil && n.TokenHash != "" && n.TokenHash == pki.HashSecret(secret) && now.Before(n.TokenExpires)
}

// check is admitted and tokenValid at once, counting a failure against
// both keys (a leader that received the join itself).
func (g *joinGuard) check(c *state.Cluster, source, mac, secret string, now time.Time) error {
	if err := g.admitted(source, mac, now); err != nil {
		return err
	}
	if !tokenValid(c, mac, secret, now) {
		g.failed("mac "+mac, now)
		if source != "" {
			g.failed("source "+source, now)
		}
		return connect.NewError(connect.CodePermissionDenied, errJoinRefused)
	}
	return nil
}
