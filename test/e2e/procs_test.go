package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// isolated starts a 3-node cluster whose nodes have their own hostnames and
// PID namespaces, as separate machines would.
func isolated(t *testing.T) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the process-space tests run the cluster with --isolate, which needs root")
	}
	return StartCluster(t, 3, "--isolate")
}

// cliCmd prepares an ssi command against node k without running it.
func (c *Cluster) cliCmd(k int, argv0 string, args ...string) *exec.Cmd {
	cmd := exec.Command(ssiBin, args...)
	cmd.Args[0] = argv0
	cmd.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(k))
	return cmd
}

func TestRemoteExecution(t *testing.T) {
	c := isolated(t)
	if out := c.MustCLI(1, "onnode", "2", "hostname"); out != "demo2\n" {
		t.Errorf("onnode 2 hostname = %q", out)
	}
	// Exit statuses are the process's own; ssi's failures are 127 and 255.
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"2", "true"}, 0, ""},
		{[]string{"3", "sh", "-c", "exit 3"}, 3, ""},
		{[]string{"2", "sh", "-c", "kill -9 $$"}, 128 + 9, ""},
		{[]string{"2", "sh", "-c", "kill -TERM $$"}, 128 + 15, ""},
		{[]string{"2", "no-such-command-here"}, 127, "node 2 (demo2)"},
		{[]string{"7", "true"}, 255, "node 7 is not in the node table"},
	} {
		r := c.CLI(1, "onnode", tc.args...)
		if r.Code != tc.code || !strings.Contains(r.Stderr, tc.err) {
			t.Errorf("onnode %v: want exit %d and %q, got %v", tc.args, tc.code, tc.err, r)
		}
	}
	// stdout and stderr stay apart; stdin reaches the process and its EOF too
	// (cat ends only when it sees EOF).
	r := c.CLI(3, "onnode", "2", "sh", "-c", "echo out; echo err >&2")
	if r.Stdout != "out\n" || r.Stderr != "err\n" {
		t.Errorf("streams: %v", r)
	}
	r = run(t, []string{"SSI_SOCKET=" + c.Socket(1)}, "line one\nline two\n", "onnode", "3", "cat")
	if r.Code != 0 || r.Stdout != "line one\nline two\n" {
		t.Errorf("stdin through cat: %v", r)
	}
	// Each node has its own PID space: the jobs' PIDs collide, as on separate machines.
	p2 := c.MustCLI(1, "onnode", "2", "sh", "-c", "echo $$")
	p3 := c.MustCLI(1, "onnode", "3", "sh", "-c", "echo $$")
	if p2 != p3 {
		t.Logf("job PIDs on nodes 2 and 3: %q %q (namespaced jobs usually both get 2)", p2, p3)
	}
	// onall runs everywhere at once and labels each line.
	out := c.MustCLI(2, "onall", "hostname")
	for k := 1; k <= 3; k++ {
		if strings.Count(out, fmt.Sprintf("%d: demo%d\n", k, k)) != 1 {
			t.Errorf("onall hostname:\n%s", out)
		}
	}
	if strings.Count(out, "\n") != 3 {
		t.Errorf("onall printed %d lines:\n%s", strings.Count(out, "\n"), out)
	}
	out = c.MustCLI(1, "onall", "-b", "uname", "-s")
	if !strings.Contains(out, "nodes 1 2 3 (3)") || strings.Count(out, "Linux") != 1 {
		t.Errorf("onall -b:\n%s", out)
	}
	if r := c.CLI(1, "onall", "sh", "-c", "exit $(hostname | tr -d demo)"); r.Code != 3 {
		t.Errorf("onall exit status should be the largest: %v", r)
	}
}

// 100 MB of binary data through `onnode N cat` arrives intact.
func TestBinaryStreamIntact(t *testing.T) {
	c := isolated(t)
	const size = 100 << 20
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(rand.IntN(256))
	}
	cmd := c.cliCmd(1, "onnode", "3", "cat")
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	want := sha256.New()
	go func() {
		for i := 0; i < size/len(block); i++ {
			block[i%len(block)] ^= byte(i) // vary the blocks
			want.Write(block)
			if _, err := in.Write(block); err != nil {
				break
			}
		}
		in.Close()
	}()
	got := sha256.New()
	n, err := io.Copy(got, outp)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("onnode cat: %v\n%s", err, stderr.String())
	}
	if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("received %d bytes with a different checksum", n)
	}
}

// Signals the CLI receives end the remote process, with the shell's status.
func TestForwardedSignals(t *testing.T) {
	c := isolated(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		cmd := c.cliCmd(1, "onnode", "2", "sleep", "100")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitForJob(t, c, 1, "sleep 100")
		cmd.Process.Signal(sig)
		err := cmd.Wait()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != 128+int(sig) {
			t.Errorf("after %v the client exited %d, want %d", sig, code, 128+int(sig))
		}
	}
}

// waitForJob waits until ps on node k lists a job whose command contains cmd.
func waitForJob(t *testing.T, c *Cluster, k int, cmd string) string {
	t.Helper()
	var line string
	Eventually(t, 10*time.Second, func() string {
		out := c.MustCLI(k, "ssi", "ps", "-e")
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, cmd) && !strings.Contains(l, `\_`) {
				line = l
				return ""
			}
		}
		return "no " + cmd + " in ps:\n" + out
	})
	return line
}

// onnode -t gives the remote process a terminal that follows resizes.
func TestTerminalSession(t *testing.T) {
	c := isolated(t)
	cmd := c.cliCmd(1, "onnode", "-t", "2", "sh", "-c", `tty; stty size; while read x; do [ "$x" = q ] && exit 7; stty size; done`)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(ptmx)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
		close(lines)
	}()
	expect := func(pred func(string) bool, what string) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("session ended before %s", what)
				}
				if pred(l) {
					return
				}
			case <-deadline:
				t.Fatalf("no %s", what)
			}
		}
	}
	expect(func(l string) bool { return strings.HasPrefix(l, "/dev/pts/") }, "remote tty")
	expect(func(l string) bool { return l == "24 80" }, "initial size 24 80")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	// The resize reaches the CLI as SIGWINCH and the remote terminal as a
	// resize message; ask for the size until the new one shows (bounded).
	resized := false
	for i := 0; i < 30 && !resized; i++ {
		ptmx.Write([]byte("\r"))
		timeout := time.After(time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("session ended before the resize showed")
				}
				if l == "40 100" {
					resized = true
					break read
				}
				if l == "24 80" {
					break read
				}
			case <-timeout:
				break read
			}
		}
	}
	if !resized {
		t.Fatal("the remote terminal never saw the new size 40 100")
	}
	ptmx.Write([]byte("q\r"))
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Errorf("terminal session exit: %v", err)
	}
}

// One process table: a job started on node 3 is visible, locatable and
// killable from the other nodes.
func TestProcessTable(t *testing.T) {
	c := isolated(t)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "3", "sleep", "100"))
	if !strings.HasPrefix(cpid, "3") || len(cpid) != 7 {
		t.Fatalf("cluster PID of a job started on node 3: %q", cpid)
	}
	line := waitForJob(t, c, 1, "sleep 100")
	f := strings.Fields(line)
	if f[0] != cpid || f[1] != "3" || f[3] != "root" {
		t.Errorf("ps line %q: want CPID %s on node 3 as root", line, cpid)
	}
	if got := strings.TrimSpace(c.MustCLI(2, "where_pid", cpid)); got != "3" {
		t.Errorf("where_pid = %q, ps says node 3", got)
	}
	c.MustCLI(2, "ssi", "kill", cpid)
	r := c.CLI(1, "ssi", "wait", cpid)
	if r.Code != 143 {
		t.Errorf("wait after kill: %v", r)
	}
	if out := c.MustCLI(1, "ssi", "ps", "-e"); strings.Contains(out, cpid) {
		t.Errorf("killed and waited job still listed:\n%s", out)
	}
	for _, tc := range []struct {
		argv0 string
		args  []string
		code  int
		msg   string
	}{
		{"ssi", []string{"kill", cpid}, 1, "no such process"},
		{"where_pid", []string{"3000999"}, 1, "no process 3000999"},
		{"ssi", []string{"kill", "12"}, 2, "not a valid cluster PID"},
		{"ssi", []string{"kill", "-s", "BOGUS", cpid}, 2, "unknown signal"},
		{"ssi", []string{"wait", "9000001"}, 1, "node 9 does not exist"},
	} {
		if r := c.CLI(2, tc.argv0, tc.args...); r.Code != tc.code || !strings.Contains(r.Stderr, tc.msg) {
			t.Errorf("%s %v: want exit %d and %q, got %v", tc.argv0, tc.args, tc.code, tc.msg, r)
		}
	}
	// Detached output goes to a log; wait returns the job's status.
	cpid = strings.TrimSpace(c.MustCLI(2, "ssi", "run", "-d", "sh", "-c", "echo first; sleep 0.5; echo second; exit 4"))
	if out := c.MustCLI(3, "ssi", "logs", "-f", cpid); out != "first\nsecond\n" {
		t.Errorf("logs -f = %q", out)
	}
	if r := c.CLI(1, "ssi", "wait", cpid); r.Code != 4 {
		t.Errorf("wait: %v", r)
	}
	// Children the job forks appear under it.
	cpid = strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", "sleep 100 & sleep 100; wait"))
	Eventually(t, 10*time.Second, func() string {
		out := c.MustCLI(3, "ssi", "ps")
		if strings.Count(out, cpid) < 3 || !strings.Contains(out, `\_ sleep 100`) {
			return "children not listed:\n" + out
		}
		return ""
	})
	c.MustCLI(1, "ssi", "kill", "-KILL", cpid)
	if r := c.CLI(1, "ssi", "wait", cpid); r.Code != 137 {
		t.Errorf("wait after kill -KILL: %v", r)
	}
}

// fastnode moves away from a node that is made busy.
func TestFastnodeAvoidsBusyNode(t *testing.T) {
	c := isolated(t)
	busy := strings.TrimSpace(c.MustCLI(1, "fastnode"))
	var cpids []string
	for i := 0; i < 2; i++ {
		cpids = append(cpids, strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", busy, "sh", "-c", "while :; do :; done")))
	}
	defer func() {
		for _, p := range cpids {
			c.CLI(1, "ssi", "kill", "-9", p)
		}
	}()
	Eventually(t, 30*time.Second, func() string {
		if got := strings.TrimSpace(c.MustCLI(2, "fastnode")); got == busy {
			return "fastnode still names the busy node " + busy + "\n" + c.MustCLI(2, "loads")
		}
		return ""
	})
	out := c.MustCLI(3, "loads", "-n", busy)
	if !strings.Contains(out, "demo"+busy) {
		t.Errorf("loads -n %s:\n%s", busy, out)
	}
	// ssi run without -n goes elsewhere.
	if out := c.MustCLI(1, "ssi", "run", "hostname"); out == "demo"+busy+"\n" {
		t.Errorf("ssi run chose the busy node")
	}
}

// A client waiting on a process whose node dies exits 255 promptly, and the
// process is reported lost.
func TestNodeDeathReachesWaitingClient(t *testing.T) {
	c := isolated(t)
	detached := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "3", "sleep", "100"))
	cmd := c.cliCmd(1, "onnode", "3", "sleep", "100")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForJob(t, c, 1, "sleep 100")
	waiter := c.cliCmd(2, "ssi", "wait", detached)
	var werr bytes.Buffer
	waiter.Stderr = &werr
	waiter.Start()
	time.Sleep(200 * time.Millisecond)
	c.Kill(3)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 255 || !strings.Contains(stderr.String(), "node 3") {
			t.Errorf("client of a dead node: %v, %q", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the client hangs after its node died")
	}
	werrc := make(chan error, 1)
	go func() { werrc <- waiter.Wait() }()
	select {
	case err := <-werrc:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 || !strings.Contains(werr.String(), "lost") {
			t.Errorf("ssi wait on a dead node: %v, %q", err, werr.String())
		}
	case <-time.After(20 * time.Second):
		waiter.Process.Kill()
		t.Fatal("ssi wait hangs after the node died")
	}
	c.WaitState([]int{1, 2}, 3, "DOWN", 10*time.Second)
	if r := c.CLI(1, "onnode", "3", "true"); r.Code != 255 || !strings.Contains(r.Stderr, "DOWN") {
		t.Errorf("onnode to a DOWN node: %v", r)
	}
	if r := c.CLI(1, "ssi", "kill", detached); r.Code != 1 || !strings.Contains(r.Stderr, "lost") {
		t.Errorf("kill of a lost process: %v", r)
	}
}

// The remote process runs as the calling user; a user may not signal
// another's processes.
func TestRemoteProcessesRunAsTheCaller(t *testing.T) {
	c := isolated(t)
	for _, d := range []string{filepath.Dir(ssiBin), c.Dir, filepath.Dir(c.Dir)} {
		os.Chmod(d, 0o755)
	}
	for k := 1; k <= 3; k++ {
		os.Chmod(filepath.Dir(c.Socket(k)), 0o755)
		os.Chmod(c.Socket(k), 0o666)
	}
	asNobody := func(args ...string) result {
		cmd := c.cliCmd(1, "ssi", args...)
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run as nobody: %v", err)
		}
		return result{out.String(), errb.String(), code}
	}
	if r := asNobody("onnode", "2", "id", "-u"); r.Code != 0 || r.Stdout != "65534\n" {
		t.Errorf("nobody's remote id: %v", r)
	}
	rootJob := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sleep", "100"))
	if r := asNobody("kill", rootJob); r.Code != 1 || !strings.Contains(r.Stderr, "not permitted") {
		t.Errorf("nobody killing root's job: %v", r)
	}
	if r := asNobody("ps"); strings.Contains(r.Stdout, rootJob) {
		t.Errorf("nobody's ps lists root's job:\n%s", r.Stdout)
	}
	nobodyJob := strings.TrimSpace(asNobody("run", "-d", "-n", "3", "sleep", "100").Stdout)
	line := waitForJob(t, c, 1, "sleep 100")
	_ = line
	out := c.MustCLI(1, "ssi", "ps", "-e")
	if !strings.Contains(out, nobodyJob) || !strings.Contains(out, "nobody") {
		t.Errorf("ps -e does not show nobody's job %s:\n%s", nobodyJob, out)
	}
	if r := asNobody("kill", nobodyJob); r.Code != 0 {
		t.Errorf("nobody killing its own job: %v", r)
	}
	c.MustCLI(1, "ssi", "kill", rootJob)
}

// A client that disconnects hangs up its remote process, like ssh.
func TestClientDisconnectSendsSIGHUP(t *testing.T) {
	c := isolated(t)
	marker := filepath.Join(t.TempDir(), "hup")
	cmd := c.cliCmd(1, "onnode", "2", "sh", "-c", "trap 'echo hup > "+marker+"; exit 0' HUP; echo ready; while :; do sleep 0.1; done")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("remote said %q", line)
	}
	cmd.Process.Kill() // the client vanishes without a word
	cmd.Wait()
	Eventually(t, 10*time.Second, func() string {
		b, _ := os.ReadFile(marker)
		if string(b) != "hup\n" {
			return "the remote process got no SIGHUP"
		}
		return ""
	})
}
