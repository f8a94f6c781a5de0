package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// The faults, in the order of the first round (the ones the issue named
// first); later rounds shuffle them.
var faultKinds = []string{"kill-leader", "kill-node1", "kill-all", "pause", "isolate", "partition", "one-way", "kill-random"}

// injectFaults runs faults one after another until ctx ends: inject, hold
// a moment, heal, wait until the cluster answers again.
func injectFaults(ctx context.Context, t *testing.T, c *cluster, f *faultLog) {
	// Let the clients start on a healthy cluster.
	sleepCtx(ctx, 2*time.Second)
	kinds := append([]string(nil), faultKinds...)
	for round := 0; ctx.Err() == nil; round++ {
		if round > 0 {
			rand.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		}
		for _, kind := range kinds {
			if ctx.Err() != nil {
				return
			}
			hold := 2*time.Second + rand.N(2*time.Second)
			from := time.Now()
			touched, err := inject(c, kind, hold)
			if err != nil {
				t.Errorf("fault %s: %v", kind, err)
				c.healAll()
			}
			f.record(kind, from, time.Now(), touched...)
			start := time.Now()
			if err := waitAnswering(c, 45*time.Second); err != nil {
				f.mu.Lock()
				f.slow = append(f.slow, fmt.Sprintf("after %s on %v: %v", kind, touched, err))
				f.mu.Unlock()
			} else if d := time.Since(start); d > 15*time.Second {
				f.mu.Lock()
				f.slow = append(f.slow, fmt.Sprintf("after %s on %v: %v to answer again", kind, touched, d.Round(time.Millisecond)))
				f.mu.Unlock()
			}
			sleepCtx(ctx, time.Second)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// inject does one fault and heals it after hold; it returns the nodes it
// acted on.
func inject(c *cluster, kind string, hold time.Duration) ([]int, error) {
	others := func(k int) []int {
		var out []int
		for j := 1; j <= c.n; j++ {
			if j != k {
				out = append(out, j)
			}
		}
		return out
	}
	random := 1 + rand.IntN(c.n)
	switch kind {
	case "kill-leader", "kill-node1", "kill-random":
		k := random
		if kind == "kill-node1" {
			k = 1
		} else if kind == "kill-leader" {
			if l := c.leader(); l > 0 {
				k = l
			}
		}
		if err := c.kill(k); err != nil {
			return []int{k}, err
		}
		time.Sleep(hold)
		return []int{k}, c.restart(k)
	case "kill-all":
		all := others(0)
		var wg sync.WaitGroup
		errs := make([]error, c.n+1)
		for _, k := range all {
			wg.Add(1)
			go func() { defer wg.Done(); errs[k] = c.kill(k) }()
		}
		wg.Wait()
		time.Sleep(time.Second)
		for _, k := range all {
			if err := c.restart(k); err != nil {
				errs[0] = err
			}
		}
		for _, err := range errs {
			if err != nil {
				return all, err
			}
		}
		return all, nil
	case "pause":
		if err := c.pause(random); err != nil {
			return []int{random}, err
		}
		time.Sleep(hold)
		c.resume(random)
		return []int{random}, nil
	case "isolate":
		if err := c.isolate(random); err != nil {
			return []int{random}, err
		}
		time.Sleep(hold)
		c.unisolate(random)
		return []int{random}, nil
	case "partition":
		// Two nodes (one of them the leader, when there is one) against
		// three: the minority cannot commit.
		a := random
		if l := c.leader(); l > 0 {
			a = l
		}
		b := others(a)[rand.IntN(c.n-1)]
		minority := []int{a, b}
		for _, m := range minority {
			for _, o := range others(0) {
				if o == a || o == b {
					continue
				}
				if err := c.drop(m, o); err != nil {
					c.healAll()
					return minority, err
				}
				if err := c.drop(o, m); err != nil {
					c.healAll()
					return minority, err
				}
			}
		}
		time.Sleep(hold)
		c.healAll()
		// Whichever side keeps the quorum of voters (3 of the 5 nodes
		// vote) may rightly declare the other DOWN: every node counts as
		// touched.
		return others(0), nil
	case "one-way":
		// Node k's packets to everyone are dropped; theirs still arrive.
		k := random
		for _, o := range others(k) {
			if err := c.drop(k, o); err != nil {
				c.healAll()
				return []int{k}, err
			}
		}
		time.Sleep(hold)
		c.healAll()
		return []int{k}, nil
	}
	return nil, fmt.Errorf("unknown fault %q", kind)
}

// waitAnswering waits until every node answers cluster -V and one names
// a leader.
func waitAnswering(c *cluster, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var err error
		for k := 1; k <= c.n && err == nil; k++ {
			_, err = c.table(k)
		}
		if err == nil && c.leader() == 0 {
			err = fmt.Errorf("no node names a leader")
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering after %v: %w", timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
