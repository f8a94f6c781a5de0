package e2e

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tmuxSession runs a command in a detached tmux session of a private tmux
// server (its own socket name), for tests of full-screen programs.
type tmuxSession struct {
	t      *testing.T
	server string
}

func newTmux(t *testing.T, width, height int, command string) *tmuxSession {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatalf("tmux is needed (scripts/deps.sh installs it): %v", err)
	}
	s := &tmuxSession{t: t, server: fmt.Sprintf("ssi-e2e-%d", rand.Uint64())}
	if out, err := exec.Command("tmux", "-L", s.server, "new-session", "-d", "-s", "main", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height), command).CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("tmux", "-L", s.server, "kill-server").Run() })
	return s
}

// screen is what the pane shows now.
func (s *tmuxSession) screen() string {
	out, err := exec.Command("tmux", "-L", s.server, "capture-pane", "-p", "-t", "main").CombinedOutput()
	if err != nil {
		return "(capture-pane: " + err.Error() + ": " + string(out) + ")"
	}
	return string(out)
}

func (s *tmuxSession) keys(k ...string) {
	s.t.Helper()
	if out, err := exec.Command("tmux", append([]string{"-L", s.server, "send-keys", "-t", "main"}, k...)...).CombinedOutput(); err != nil {
		s.t.Fatalf("tmux send-keys: %v: %s", err, out)
	}
}

func (s *tmuxSession) alive() bool {
	return exec.Command("tmux", "-L", s.server, "has-session", "-t", "main").Run() == nil
}

// ssi top in a real terminal (tmux): it shows every node, then redraws by
// itself as things change (a new job appears, a killed node turns DOWN,
// the clock moves), and q ends it.
func TestTopInTmux(t *testing.T) {
	c := StartCluster(t, 3)
	tm := newTmux(t, 130, 40, fmt.Sprintf("env SSI_SOCKET=%s %s top -d 300ms", c.Socket(1), ssiBin))
	nodeRow := func(k int, state string) *regexp.Regexp {
		return regexp.MustCompile(fmt.Sprintf(`(?m)^\s+%d demo%d\s+%s\s`, k, k, state))
	}
	waitScreen := func(what string, ok func(string) bool) string {
		t.Helper()
		var scr string
		Eventually(t, 10*time.Second, func() string {
			scr = tm.screen()
			if ok(scr) {
				return ""
			}
			return fmt.Sprintf("ssi top shows no %s:\n%s", what, scr)
		})
		return scr
	}
	scr := waitScreen("row for every node", func(s string) bool {
		return nodeRow(1, "UP").MatchString(s) && nodeRow(2, "UP").MatchString(s) && nodeRow(3, "UP").MatchString(s)
	})
	if !strings.Contains(scr, "ssi top - ") || !strings.Contains(scr, "Nodes: 3 total, 3 up") || !strings.Contains(scr, "COMMAND") {
		t.Fatalf("top's header or tables are missing:\n%s", scr)
	}
	clock := regexp.MustCompile(`ssi top - (\d\d:\d\d:\d\d)`)
	first := clock.FindStringSubmatch(scr)[1]
	waitScreen("new time in its header", func(s string) bool {
		m := clock.FindStringSubmatch(s)
		return m != nil && m[1] != first
	})

	// A job started elsewhere appears without a key being pressed.
	cpid := strings.TrimSpace(c.MustCLI(2, "ssi", "run", "-d", "-n", "3", "sleep", "60"))
	waitScreen("row for process "+cpid, func(s string) bool {
		return regexp.MustCompile(`(?m)^` + cpid + `\s+3\s+\d+\s+\S+\s+S\s.*sleep 60`).MatchString(s)
	})
	// A node whose daemon dies turns DOWN on the screen.
	c.Kill(3)
	waitScreen("DOWN node 3", func(s string) bool {
		return nodeRow(3, "DOWN").MatchString(s) && nodeRow(2, "UP").MatchString(s) && strings.Contains(s, "1 down")
	})

	tm.keys("q")
	Eventually(t, 5*time.Second, func() string {
		if tm.alive() {
			return "ssi top still runs after q:\n" + tm.screen()
		}
		return ""
	})
}
