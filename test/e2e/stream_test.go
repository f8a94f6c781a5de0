package e2e

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
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
	c := isolated(t)
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
