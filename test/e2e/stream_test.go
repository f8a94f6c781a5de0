package e2e

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

// execStreams is how many exec streams node k relayed to another node over
// a connection of their own (ssi-exec) and over RPC.
func execStreams(t *testing.T, c *Cluster, k int) (own, rpc float64) {
	t.Helper()
	mf := c.scrapeIsolated(t, k)
	own, okOwn := value(mf["ssi_exec_streams_total"], map[string]string{"transport": "own"})
	rpc, okRPC := value(mf["ssi_exec_streams_total"], map[string]string{"transport": "rpc"})
	if !okOwn || !okRPC {
		t.Fatalf("node %d has no ssi_exec_streams_total{transport=own|rpc}", k)
	}
	return own, rpc
}

// A few MB through `onnode 2 cat` from node 1, through the real CLI, come
// back byte-exact, over the exec stream's own connection between the
// daemons (node 1's ssi_exec_streams_total says which transport it used).
func TestLeanStreamCat(t *testing.T) {
	c := ownStreams(t)
	own0, rpc0 := execStreams(t, c, 1)
	const size = 6<<20 + 12345 // not a multiple of any chunk
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	cmd := c.cliCmd(1, "onnode", "2", "cat")
	cmd.Stdin = bytes.NewReader(data)
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, err := io.Copy(got, outp)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("onnode 2 cat: %v\n%s", err, stderr.String())
	}
	if want := sha256.Sum256(data); n != size || !bytes.Equal(got.Sum(nil), want[:]) {
		t.Fatalf("received %d of %d bytes, sha256 %x, want %x", n, size, got.Sum(nil), want)
	}
	own, rpc := execStreams(t, c, 1)
	if own != own0+1 || rpc != rpc0 {
		t.Errorf("node 1 relayed %v streams over their own connection and %v over RPC during the test; want 1 and 0", own-own0, rpc-rpc0)
	}
}

// ownStreams is an --isolate cluster whose daemons relay exec streams over
// connections of their own (--exec-streams own, through $SSI_EXEC_STREAMS,
// which ssi up's daemons inherit); the default is RPC.
func ownStreams(t *testing.T) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the exec-stream tests run the cluster with --isolate, which needs root")
	}
	return StartClusterEnv(t, 3, []string{"SSI_EXEC_STREAMS=own"}, "--isolate")
}

// By default (--exec-streams rpc) a relayed exec is a pooled Connect
// stream: no TLS handshake per exec.
func TestExecStreamsDefaultToRPC(t *testing.T) {
	c := isolated(t)
	own0, rpc0 := execStreams(t, c, 1)
	if out := c.MustCLI(1, "onnode", "2", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Fatalf("onnode 2 echo hi: %q", out)
	}
	if own, rpc := execStreams(t, c, 1); own != own0 || rpc != rpc0+1 {
		t.Errorf("node 1 relayed %v streams over their own connection and %v over RPC; want 0 and 1", own-own0, rpc-rpc0)
	}
	if r := run(t, nil, "", "ssi", "daemon", "--exec-streams", "lean", "--data-dir", t.TempDir()); r.Code != 2 || !strings.Contains(r.Stderr, "want rpc or own") {
		t.Errorf("ssi daemon --exec-streams lean: %v; want a usage error", r)
	}
}
