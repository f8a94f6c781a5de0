package cvip

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Health checking, from the director: every checkInterval each backend
// gets a TCP connect (or an HTTP GET of the VIP's check path) with
// checkTimeout; failRise consecutive failures take it out, riseCount
// successes bring it back. A backend starts out unhealthy until its first
// check passes, so a new director never sends clients to a backend it has
// not seen answer. Detection time: at most failRise*checkInterval +
// checkTimeout (1.3 s).
const (
	checkInterval = 400 * time.Millisecond
	checkTimeout  = 500 * time.Millisecond
	failRise      = 2
	riseCount     = 1
)

// probe checks one backend once.
func probe(ctx context.Context, addr, path string) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if path == "" {
		return nil
	}
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ssi-cvip-check\r\nConnection: close\r\n\r\n", path, addr); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return nil
}

// target is one backend to check.
type target struct {
	Num  uint32
	Addr string // IP:PORT
}

// health is one backend's state.
type health struct {
	ok            bool
	fails, passes int
	reason        string
}

// checker checks the backends of one VIP until stopped.
type checker struct {
	path   string
	cancel context.CancelFunc
	done   chan struct{}
	wake   func()
	kick   chan struct{} // new targets: check them now

	mu      sync.Mutex
	targets []target
	state   map[target]*health
	rounds  int // completed rounds of checks
}

// setPath changes the HTTP path checked ("" : a TCP connect) from the
// next round on.
func (c *checker) setPath(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.path = path
}

// checked reports whether a round of checks has completed since the
// targets last changed.
func (c *checker) checked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rounds > 0
}

func newChecker(path string, wake func()) *checker {
	ctx, cancel := context.WithCancel(context.Background())
	c := &checker{path: path, cancel: cancel, done: make(chan struct{}), wake: wake, kick: make(chan struct{}, 1), state: map[target]*health{}}
	go c.run(ctx)
	return c
}

func (c *checker) stop() { c.cancel(); <-c.done }

// setTargets replaces what is checked; new targets start unhealthy.
func (c *checker) setTargets(ts []target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fmt.Sprint(ts) != fmt.Sprint(c.targets) {
		c.rounds = 0
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	c.targets = ts
	keep := map[target]*health{}
	for _, t := range ts {
		if h, ok := c.state[t]; ok {
			keep[t] = h
		} else {
			keep[t] = &health{reason: "not checked yet"}
		}
	}
	c.state = keep
}

// healthy reports t's state and why.
func (c *checker) healthy(t target) (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.state[t]; ok {
		return h.ok, h.reason
	}
	return false, "not checked yet"
}

func (c *checker) run(ctx context.Context) {
	defer close(c.done)
	tick := time.NewTicker(checkInterval)
	defer tick.Stop()
	for {
		c.mu.Lock()
		ts := append([]target(nil), c.targets...)
		path := c.path
		c.mu.Unlock()
		var wg sync.WaitGroup
		errs := make([]error, len(ts))
		for i, t := range ts {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = probe(ctx, t.Addr, path) }()
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		changed := false
		c.mu.Lock()
		if fmt.Sprint(ts) == fmt.Sprint(c.targets) {
			if c.rounds == 0 {
				changed = true // the first round: wake the director
			}
			c.rounds++
		}
		for i, t := range ts {
			h := c.state[t]
			if h == nil {
				continue
			}
			was := h.ok
			if errs[i] == nil {
				h.fails, h.passes = 0, h.passes+1
				if h.passes >= riseCount {
					h.ok = true
				}
				h.reason = "tcp connect ok"
				if path != "" {
					h.reason = "GET " + path + " ok"
				}
			} else {
				h.passes, h.fails = 0, h.fails+1
				if h.fails >= failRise || !h.ok {
					h.ok = false
				}
				h.reason = errs[i].Error() + " (" + strconv.Itoa(h.fails) + " in a row)"
			}
			changed = changed || was != h.ok
		}
		c.mu.Unlock()
		if changed {
			c.wake()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-c.kick:
		}
	}
}
