package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
	"github.com/ssi-cluster/ssi/internal/state"
)

// BenchmarkCFSReplica measures what a replica costs the cluster
// filesystem (docs/CFS.md "Replica and failover"): on node 3's mount of a
// 3-node cluster (node 1 serves), small files created, written and
// fsync'd, and a large file written then fsync'd, first without a replica
// and then with node 2 replicating, in the same run; the full copy's time;
// and a failover: from SIGKILL of node 1 to the first write through node
// 3's mount that succeeds, against the cluster's failure-detection time.
//
//	go test -run '^$' -bench CFSReplica -benchtime 1x ./bench/
func BenchmarkCFSReplica(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("mounts FUSE: needs root")
	}
	c, _ := up(b, 3)
	mnt := devcluster.MountDir(c.dir, 3)
	waitMounted(b, mnt)
	const files = 300
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	small := bytes.Repeat([]byte("x"), 4096)
	phase := func(name string) (perFile time.Duration, mbps float64) {
		dir := filepath.Join(mnt, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for i := range files {
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%04d", i)))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(small); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		perFile = time.Since(start) / files
		start = time.Now()
		f, err := os.Create(filepath.Join(dir, "big"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(big); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
		return perFile, float64(len(big)) / 1e6 / time.Since(start).Seconds()
	}
	alone, aloneMB := phase("alone")

	start := time.Now()
	if out, err := ssi("cfs", "replica", "--socket", devcluster.Socket(c.dir, 1), "2"); err != nil {
		b.Fatalf("ssi cfs replica 2: %v\n%s", err, out)
	}
	waitRecord(b, c, 3, func(r cfsRecord) bool { return r.Replica == 2 && r.Synced }, 60*time.Second)
	copied := time.Since(start)
	repl, replMB := phase("replicated")

	// Failover.
	failure := state.DefaultFailureTimeout // ssi up's
	c.kill(1)
	killed := time.Now()
	var took time.Duration
	for i := 0; ; i++ {
		if err := os.WriteFile(filepath.Join(mnt, fmt.Sprintf("after-%d", i)), []byte("x"), 0o644); err == nil {
			took = time.Since(killed)
			break
		}
		if time.Since(killed) > 60*time.Second {
			b.Fatal("no write succeeded within 60 s of the server's death")
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("cfs replica (node 3's mount; node 1 serves, node 2 replicates):\n")
	fmt.Printf("  create+write 4 KiB+fsync: %.2f ms/file alone, %.2f ms/file replicated\n", ms2(alone), ms2(repl))
	ratio(b, "  replicated/alone, small files (time)", "small-file-x", float64(repl)/float64(alone))
	fmt.Printf("  64 MiB write+fsync: %.0f MB/s alone, %.0f MB/s replicated\n", aloneMB, replMB)
	ratio(b, "  replicated/alone, 64 MiB (throughput)", "bulk-x", replMB/aloneMB)
	fmt.Printf("  full copy of %d files and 64 MiB to the new replica: %v\n", files+2, copied.Round(time.Millisecond))
	b.ReportMetric(copied.Seconds(), "full-copy-s")
	fmt.Printf("  failover: first write through node 3 %v after SIGKILL of node 1 (failure timeout %v)\n", took.Round(time.Millisecond), failure)
	ratio(b, "  failover time / failure timeout", "failover-x", took.Seconds()/failure.Seconds())
}

type cfsRecord struct {
	Server, Replica uint32
	Synced          bool
	Failovers       uint64
}

func waitRecord(b *testing.B, c *cluster, k int, ok func(cfsRecord) bool, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := ssi("cfs", "--json", "--socket", devcluster.Socket(c.dir, k))
		var r cfsRecord
		if err == nil && json.Unmarshal([]byte(out), &r) == nil && ok(r) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("the cluster filesystem's record never got there: %s %v", out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitMounted(b *testing.B, mnt string) {
	b.Helper()
	for i := 0; i < 200; i++ {
		if m, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(m), " "+mnt+" ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s is not mounted", mnt)
}
