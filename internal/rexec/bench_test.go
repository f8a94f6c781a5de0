package rexec

import (
	"context"
	"io"
	"os/exec"
	"testing"
	"time"
)

// benchSpec is a plain job of argv as the current user.
func benchSpec(argv ...string) Spec { return modes[0].spec(nil, argv...) }

func runEngine(b *testing.B, spec Spec) {
	j, err := Start(context.Background(), spec)
	if err != nil {
		b.Fatal(err)
	}
	j.Stdin().Close()
	if st, err := j.Wait(); err != nil || st.ExitCode() != 0 {
		b.Fatalf("%v %v", st, err)
	}
	j.Close()
}

func runOSExec(b *testing.B) {
	if err := exec.Command("/bin/true").Run(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStartWait measures starting /bin/true and waiting for it: plain
// os/exec, the engine's plain job (which adds three pipes and a PATH
// lookup), and the engine's isolated jobs (which add a re-exec of the init,
// namespaces and cgroup set-up and removal).
func BenchmarkStartWait(b *testing.B) {
	b.Run("os-exec", func(b *testing.B) {
		for b.Loop() {
			runOSExec(b)
		}
	})
	b.Run("engine", func(b *testing.B) {
		spec := benchSpec("/bin/true")
		for b.Loop() {
			runEngine(b, spec)
		}
	})
	for _, m := range modes[1:] {
		b.Run("engine-"+m.name, func(b *testing.B) {
			spec := m.spec(b, "/bin/true")
			for b.Loop() {
				runEngine(b, spec)
			}
		})
	}
}

// BenchmarkStartWaitRatio alternates the engine's plain job and os/exec and
// reports how many times slower the engine is (x-os-exec).
func BenchmarkStartWaitRatio(b *testing.B) {
	spec := benchSpec("/bin/true")
	var engine, plain time.Duration
	for b.Loop() {
		t0 := time.Now()
		runEngine(b, spec)
		t1 := time.Now()
		runOSExec(b)
		engine, plain = engine+t1.Sub(t0), plain+time.Since(t1)
	}
	b.ReportMetric(float64(engine)/float64(plain), "x-os-exec")
}

// BenchmarkPipe measures throughput through a running cat: the engine's
// pipes against os/exec with plain pipes. One op is 1 MiB.
func BenchmarkPipe(b *testing.B) {
	const chunk = 1 << 20
	pump := func(b *testing.B, w io.WriteCloser, r io.Reader) {
		buf := make([]byte, chunk)
		go func() {
			for i := 0; i < b.N; i++ {
				if _, err := w.Write(buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
		b.SetBytes(chunk)
		b.ResetTimer()
		if _, err := io.CopyN(io.Discard, r, int64(b.N)*chunk); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		w.Close()
	}
	b.Run("os-exec", func(b *testing.B) {
		cmd := exec.Command("cat")
		w, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		r, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pump(b, w, r)
		_ = cmd.Wait()
	})
	for _, m := range modes[:2] {
		b.Run("engine-"+m.name, func(b *testing.B) {
			spec := m.spec(b, "cat")
			j, err := Start(context.Background(), spec)
			if err != nil {
				b.Fatal(err)
			}
			pump(b, j.Stdin(), j.Stdout())
			_, _ = j.Wait()
			j.Close()
		})
	}
}
