package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// webPort is the port of the daemons' automatic dashboard address.
const webPort = 7480

// chromium finds the browser (Debian's package: scripts/deps.sh).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium to drive (scripts/deps.sh installs Debian's chromium)")
	return ""
}

// artifacts is the directory the test's screenshots go to: $SSI_E2E_ARTIFACTS
// or a directory of its own that outlives the test.
func artifacts(t *testing.T) string {
	dir := os.Getenv("SSI_E2E_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "ssi-e2e-artifacts-"); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// browser is one headless Chromium; tab opens a page in it.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string
}

func newBrowser(t *testing.T) *browser {
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium(t)), chromedp.WindowSize(1400, 1100),
		chromedp.Flag("disable-dev-shm-usage", true))
	if os.Getuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: bctx, dir: artifacts(t)}
}

// tab is a new tab of the browser (a fresh page: its own session storage).
// The tab lives as long as the context of its first action: that one has
// no timeout.
func (b *browser) tab(t *testing.T) context.Context {
	ctx, cancel := chromedp.NewContext(b.ctx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	return ctx
}

func (b *browser) run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, actions...); err != nil {
		b.shot(t, ctx, "failed-"+strings.ReplaceAll(what, " ", "-"))
		t.Fatalf("%s: %v", what, err)
	}
}

func (b *browser) shot(t *testing.T, ctx context.Context, name string) {
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(tctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
	}
}

// eval runs JavaScript in the page, awaiting a promise, and decodes its value.
func eval[T any](t *testing.T, b *browser, ctx context.Context, js string) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.shot(t, ctx, "failed-eval")
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// css is a CSS selector for chromedp.
func css(format string, a ...any) chromedp.CSS { return chromedp.CSS(fmt.Sprintf(format, a...)) }

// The dashboard in a real browser (headless Chromium) against a real
// 3-node cluster: an unauthenticated visitor sees and does nothing; an
// admin's page shows every node, lists a process started with onnode and
// ends it with its kill button, and shows a node whose daemon was killed
// turn DOWN without a reload; a read-only identity has no kill button and
// is refused when it tries anyway. Screenshots go to the artifacts
// directory the test logs.
func TestDashboardInBrowser(t *testing.T) {
	c := StartCluster(t, 3)
	b := newBrowser(t)
	url := fmt.Sprintf("http://%s:%d/", c.IP(1), webPort)
	if out := strings.TrimSpace(c.MustCLI(1, "ssi", "dashboard")); out != url {
		t.Fatalf("ssi dashboard printed %q, want %q", out, url)
	}
	admin := strings.TrimSpace(c.MustCLI(1, "ssi", "dashboard", "token"))
	readOnly := strings.TrimSpace(c.MustCLI(2, "ssi", "dashboard", "token", "--read-only"))
	victim := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sleep", "300"))
	running := func(cpid string) bool {
		out := c.MustCLI(1, "ssi", "ps", "-e", "--json")
		var ps []struct {
			CPID  int64  `json:"cpid"`
			State string `json:"state"`
		}
		if err := json.Unmarshal([]byte(out), &ps); err != nil {
			t.Fatalf("ps --json: %v\n%s", err, out)
		}
		for _, p := range ps {
			if fmt.Sprint(p.CPID) == cpid {
				return p.State != "X" && p.State != "Z"
			}
		}
		return false
	}

	t.Run("unauthenticated", func(t *testing.T) {
		ctx := b.tab(t)
		b.run(t, ctx, "open the page without a token", chromedp.Navigate(url), chromedp.WaitVisible(css("#login-form")))
		loginShown := eval[bool](t, b, ctx, `!document.querySelector('#login').hidden`)
		appHidden := eval[bool](t, b, ctx, `document.querySelector('#app').hidden`)
		cards := eval[int](t, b, ctx, `document.querySelectorAll('.card, #procs tbody tr, #timeline li').length`)
		if !loginShown || !appHidden || cards != 0 {
			t.Fatalf("without a token: login shown %v, app hidden %v, %d data elements", loginShown, appHidden, cards)
		}
		statuses := eval[[]int](t, b, ctx, fmt.Sprintf(`Promise.all([
			fetch('/api/stream').then(r => r.status),
			fetch('/api/session', {headers: {Authorization: 'Bearer ssid1.forged.token'}}).then(r => r.status),
			fetch('/api/kill', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({cpid: %s})}).then(r => r.status),
			fetch('/api/nodes', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"hwaddr":"0a:00:00:00:99:01","ipaddr":"127.0.0.99"}'}).then(r => r.status),
		])`, victim))
		if len(statuses) != 4 {
			t.Fatalf("statuses %v", statuses)
		}
		for i, s := range statuses {
			if s != 401 {
				t.Errorf("request %d without a valid token: HTTP %d, want 401", i, s)
			}
		}
		// A wrong token typed into the form is refused on the page.
		b.run(t, ctx, "sign in with a bad token", chromedp.SendKeys(css("#token"), "ssid1.bad.token"), chromedp.Click(css("#login-form button")),
			func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
				return chromedp.Poll[chromedp.Void](`document.querySelector('#login-error').textContent.includes('not a valid dashboard token')`)(ctx, tg)
			})
		if eval[int](t, b, ctx, `document.querySelectorAll('.card').length`) != 0 {
			t.Fatal("a bad token showed nodes")
		}
		b.shot(t, ctx, "1-unauthenticated")
		if !running(victim) {
			t.Fatalf("process %s ended after the unauthenticated kill", victim)
		}
		if strings.Contains(c.MustCLI(1, "clustertab"), "0a:00:00:00:99:01") {
			t.Fatal("an unauthenticated request added a node")
		}
	})

	ctx := b.tab(t)
	t.Run("grid shows every node", func(t *testing.T) {
		b.run(t, ctx, "sign in as admin", chromedp.Navigate(url+"#token="+admin))
		for k := 1; k <= 3; k++ {
			b.run(t, ctx, fmt.Sprintf("node %d UP", k), chromedp.WaitVisible(css(`.card[data-node="%d"][data-state="UP"]`, k)))
		}
		role := eval[string](t, b, ctx, `document.querySelector('#who').dataset.role`)
		addr := eval[string](t, b, ctx, `location.href`)
		if role != "admin" || strings.Contains(addr, "token") {
			t.Fatalf("signed in as %q; address bar %q (the token must leave it)", role, addr)
		}
	})

	t.Run("add-node form registers a node", func(t *testing.T) {
		b.run(t, ctx, "fill the add-node form", chromedp.SendKeys(css("#add-mac"), "0a:00:00:00:99:04"), chromedp.SendKeys(css("#add-ip"), c.BaseIP[:strings.LastIndex(c.BaseIP, ".")]+".9"),
			chromedp.SendKeys(css("#add-name"), "spare"), chromedp.Click(css("#addnode button")),
			func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
				return chromedp.Poll[chromedp.Void](`document.querySelector('#add-result').textContent.includes('ssi join')`)(ctx, tg)
			},
			chromedp.WaitVisible(css(`#nodes tr[data-node="4"]`)))
		if out := c.MustCLI(2, "clustertab"); !strings.Contains(out, "0a:00:00:00:99:04") {
			t.Fatalf("the node added on the page is not in the table:\n%s", out)
		}
		if txt := eval[string](t, b, ctx, `document.querySelector('#nodes tr[data-node="4"]').textContent`); !strings.Contains(txt, "spare") || !strings.Contains(txt, "NEVERUP") {
			t.Fatalf("the node table's new row: %q", txt)
		}
		if txt := eval[string](t, b, ctx, `document.querySelector('#add-result').textContent`); !strings.Contains(txt, "SSI1-") {
			t.Fatalf("add-node shows no join token: %q", txt)
		}
	})

	t.Run("onnode process appears and its kill button ends it", func(t *testing.T) {
		onnode := exec.Command(ssiBin, "onnode", "3", "sleep", "300")
		onnode.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(1))
		if err := onnode.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- onnode.Wait() }()
		t.Cleanup(func() { _ = onnode.Process.Kill() })
		var cpid string
		Eventually(t, 10*time.Second, func() string {
			for _, line := range strings.Split(c.MustCLI(1, "ssi", "ps", "-e"), "\n") {
				if f := strings.Fields(line); len(f) > 2 && f[1] == "3" && strings.HasSuffix(line, "sleep 300") {
					cpid = f[0]
					return ""
				}
			}
			return "onnode 3 sleep 300 is not in ps"
		})
		row := css(`#procs tr[data-cpid="%s"]`, cpid)
		button := css(`button.kill[data-cpid="%s"]`, cpid)
		b.run(t, ctx, "the process's row", chromedp.WaitVisible(row), chromedp.WaitVisible(css(`#timeline li`)))
		b.shot(t, ctx, "2-grid-and-processes")
		b.run(t, ctx, "arm the kill button", chromedp.Click(button),
			func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
				return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(document.querySelector('%s') || {}).textContent === 'confirm kill'`, button))(ctx, tg)
			})
		b.run(t, ctx, "confirm the kill", chromedp.Click(button))
		select {
		case err := <-exited:
			if err == nil {
				t.Fatalf("onnode exited 0 after its process was killed")
			}
		case <-time.After(10 * time.Second):
			b.shot(t, ctx, "failed-kill")
			t.Fatalf("onnode still runs 10s after the kill button")
		}
		b.run(t, ctx, "the row goes", chromedp.WaitNotPresent(row))
		if !running(victim) {
			t.Fatalf("the other process %s ended too", victim)
		}
	})

	t.Run("read-only identity cannot kill", func(t *testing.T) {
		rctx := b.tab(t)
		row := css(`#procs tr[data-cpid="%s"]`, victim)
		b.run(t, rctx, "sign in read-only", chromedp.Navigate(fmt.Sprintf("http://%s:%d/#token=%s", c.IP(2), webPort, readOnly)),
			chromedp.WaitVisible(css(`.card[data-node="3"]`)), chromedp.WaitVisible(row))
		buttons := eval[int](t, b, rctx, `document.querySelectorAll('button.kill, button.migrate').length`)
		role := eval[string](t, b, rctx, `document.querySelector('#who').dataset.role`)
		if buttons != 0 || role != "read-only" {
			t.Fatalf("read-only page: %d kill/migrate buttons, role %q", buttons, role)
		}
		b.shot(t, rctx, "3-read-only")
		status := eval[int](t, b, rctx, fmt.Sprintf(`fetch('/api/kill', {method: 'POST', headers: {'Content-Type': 'application/json', Authorization: 'Bearer ' + sessionStorage.getItem('ssi-token')}, body: JSON.stringify({cpid: %s, signal: 'KILL'})}).then(r => r.status)`, victim))
		if status != 403 {
			t.Fatalf("read-only kill: HTTP %d, want 403", status)
		}
		time.Sleep(300 * time.Millisecond)
		if !running(victim) {
			t.Fatalf("a read-only token killed process %s", victim)
		}
	})

	t.Run("killed daemon turns DOWN without a reload", func(t *testing.T) {
		eval[int](t, b, ctx, `window.__sameLoad = 42`)
		c.Kill(3)
		b.run(t, ctx, "node 3 DOWN", chromedp.WaitVisible(css(`.card[data-node="3"][data-state="DOWN"]`)),
			chromedp.WaitVisible(css(`#timeline li[data-kind="membership"][data-node="3"]`)))
		if eval[int](t, b, ctx, `window.__sameLoad || 0`) != 42 {
			t.Fatal("the page was reloaded")
		}
		if txt := eval[string](t, b, ctx, `document.querySelector('#timeline li[data-node="3"]').textContent`); !strings.Contains(txt, "DOWN") {
			t.Fatalf("the newest timeline entry of node 3 is %q, want its DOWN", txt)
		}
		b.shot(t, ctx, "4-node-down")
	})
}
