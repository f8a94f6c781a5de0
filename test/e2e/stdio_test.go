package e2e

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// heldElsewhere reports whether a process other than this one and the
// CLI (pid) has a descriptor open on the pipe or file of f: the daemon
// does once it has taken the CLI's stdio (the job has pipes of its own).
func heldElsewhere(t *testing.T, cli int, f *os.File) bool {
	t.Helper()
	want, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	links, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, l := range links {
		pid, _ := strconv.Atoi(strings.Split(l, "/")[2])
		if pid == os.Getpid() || pid == cli {
			continue
		}
		if got, err := os.Readlink(l); err == nil && got == want {
			return true
		}
	}
	return false
}

// randomBlocks writes n MiB of random data to w, closes it, and returns
// its checksum on sum.
func randomBlocks(w io.WriteCloser, mib int, sum chan<- []byte) {
	h := sha256.New()
	block := make([]byte, 1<<20)
	for i := 0; i < mib; i++ {
		for j := range block {
			block[j] = byte(rand.IntN(256))
		}
		h.Write(block)
		if _, err := w.Write(block); err != nil {
			break
		}
	}
	w.Close()
	sum <- h.Sum(nil)
}

// The CLI passes its stdin, stdout and stderr to its daemon (SCM_RIGHTS),
// which reads and writes them itself: for a job on another node and on the
// same one, a large stdin comes back intact on stdout, stderr stays
// separate, the exit code is the job's; the daemon holds the CLI's pipe
// while the job runs and not after. SSI_STREAM_STDIO=1 (streaming through
// the CLI) gives the same result without the daemon holding anything.
func TestPassedStdio(t *testing.T) {
	c := isolated(t)
	const mib = 32
	for _, node := range []string{"2", "1"} {
		for _, passed := range []bool{true, false} {
			t.Run(fmt.Sprintf("node%s/passed=%v", node, passed), func(t *testing.T) {
				cmd := c.cliCmd(1, "onnode", node, "sh", "-c", "cat; echo err >&2; exit 3")
				if !passed {
					cmd.Env = append(cmd.Env, "SSI_STREAM_STDIO=1")
				}
				inR, inW, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer inR.Close()
				outR, outW, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer outR.Close()
				var stderr bytes.Buffer
				cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				outW.Close()
				sum := make(chan []byte, 1)
				// The daemon has the CLI's stdin while the job runs
				// (checked before any data goes: cat then waits for it).
				Eventually(t, 10*time.Second, func() string {
					if heldElsewhere(t, cmd.Process.Pid, inW) == passed {
						return ""
					}
					return fmt.Sprintf("node 1's daemon holds the CLI's stdin: %v, want %v", !passed, passed)
				})
				go randomBlocks(inW, mib, sum)
				h := sha256.New()
				n, err := io.Copy(h, outR)
				if err != nil {
					t.Fatal(err)
				}
				err = cmd.Wait()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 3 {
					t.Fatalf("onnode %s: %v, want exit 3\n%s", node, err, stderr.String())
				}
				if stderr.String() != "err\n" {
					t.Errorf("stderr %q, want %q", stderr.String(), "err\n")
				}
				if want := <-sum; n != mib<<20 || !bytes.Equal(h.Sum(nil), want) {
					t.Fatalf("got %d bytes with checksum %x, want %d bytes with %x", n, h.Sum(nil), mib<<20, want)
				}
				Eventually(t, 10*time.Second, func() string {
					if heldElsewhere(t, cmd.Process.Pid, outR) {
						return "node 1's daemon still holds the CLI's stdout after the request ended"
					}
					return ""
				})
			})
		}
	}
}

// Output into regular files (which the daemon cannot splice into when
// opened for appending) and stdin from one arrive whole.
func TestPassedStdioFiles(t *testing.T) {
	c := isolated(t)
	dir := t.TempDir()
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"2", "1"} {
		for _, appendMode := range []bool{false, true} {
			t.Run(fmt.Sprintf("node%s/append=%v", node, appendMode), func(t *testing.T) {
				outPath, errPath := filepath.Join(dir, "out"+node), filepath.Join(dir, "err"+node)
				flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
				head := ""
				if appendMode {
					head = "head\n"
					if err := os.WriteFile(outPath, []byte(head), 0o644); err != nil {
						t.Fatal(err)
					}
					flags = os.O_WRONLY | os.O_APPEND
				}
				stdin, err := os.Open(in)
				if err != nil {
					t.Fatal(err)
				}
				defer stdin.Close()
				stdout, err := os.OpenFile(outPath, flags, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				defer stdout.Close()
				stderr, err := os.Create(errPath)
				if err != nil {
					t.Fatal(err)
				}
				defer stderr.Close()
				cmd := c.cliCmd(1, "onnode", node, "sh", "-c", "cat; echo err >&2; exit 3")
				cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
				err = cmd.Run()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 3 {
					b, _ := os.ReadFile(errPath)
					t.Fatalf("onnode %s: %v, want exit 3\n%s", node, err, b)
				}
				got, _ := os.ReadFile(outPath)
				if !bytes.Equal(got, append([]byte(head), data...)) {
					t.Errorf("the output file has %d bytes, want %d (%d of output after %q)", len(got), len(head)+len(data), len(data), head)
				}
				if b, _ := os.ReadFile(errPath); string(b) != "err\n" {
					t.Errorf("stderr file %q, want %q", b, "err\n")
				}
			})
		}
	}
}

// A reader that goes away ends the job as it would end a local one: the
// job gets SIGPIPE and onnode exits 128+13.
func TestPassedStdoutClosedGivesSIGPIPE(t *testing.T) {
	c := isolated(t)
	for _, node := range []string{"2", "1"} {
		cmd := c.cliCmd(1, "onnode", node, "yes")
		outR, outW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = outW, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		outW.Close()
		b := make([]byte, 4)
		if _, err := io.ReadFull(outR, b); err != nil || string(b) != "y\ny\n" {
			t.Fatalf("read %q, %v", b, err)
		}
		outR.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGPIPE) {
				t.Errorf("onnode %s yes after its reader left: %v, want exit %d\n%s", node, err, 128+int(syscall.SIGPIPE), stderr.String())
			}
			if strings.TrimSpace(stderr.String()) != "" {
				t.Errorf("stderr %q, want none", stderr.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("onnode %s yes still runs 30s after its reader left", node)
		}
	}
}

// A client that vanishes while its stdout is full (nobody reads it) hangs
// the job up, and its daemon lets go of the descriptors it was given.
func TestPassedStdioClientGoneWhileOutputBlocked(t *testing.T) {
	c := isolated(t)
	for _, node := range []string{"2", "1"} {
		marker := filepath.Join(t.TempDir(), "hup")
		cmd := c.cliCmd(1, "onnode", node, "sh", "-c", "trap 'echo hup > "+marker+"; exit 0' HUP; while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done")
		outR, outW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout = outW
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		outW.Close()
		Eventually(t, 10*time.Second, func() string {
			if heldElsewhere(t, cmd.Process.Pid, outR) {
				return ""
			}
			return "the daemon did not take the CLI's stdout"
		})
		time.Sleep(200 * time.Millisecond) // the pipe fills up: the pump waits for room
		cmd.Process.Kill()
		cmd.Wait()
		Eventually(t, 10*time.Second, func() string {
			if b, _ := os.ReadFile(marker); string(b) != "hup\n" {
				return "onnode " + node + ": the job got no SIGHUP"
			}
			if heldElsewhere(t, -1, outR) {
				return "onnode " + node + ": the daemon still holds the vanished CLI's stdout"
			}
			return ""
		})
		outR.Close()
	}
}
