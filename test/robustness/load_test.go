package robustness

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// burnEnv makes the test binary a CPU load generator instead (TestMain):
// one busy goroutine per CPU for the given number of seconds, then exit.
const burnEnv = "ROBUSTNESS_BURN_SECONDS"

func burn() {
	secs, _ := strconv.Atoi(os.Getenv(burnEnv))
	if secs <= 0 || secs > 3600 {
		secs = 60
	}
	end := time.Now().Add(time.Duration(secs) * time.Second)
	var wg sync.WaitGroup
	for i := 0; i < runtime.NumCPU(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := uint64(1)
			for time.Now().Before(end) {
				for j := 0; j < 1_000_000; j++ {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
			_ = x
		}()
	}
	wg.Wait()
	os.Exit(0)
}

// startLoad runs the load generator for d (it ends by itself; stop ends
// it earlier).
func startLoad(d time.Duration) (stop func(), err error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), burnEnv+"="+strconv.Itoa(int(d.Seconds())+1))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() //nolint:errcheck
	return func() {
		_ = cmd.Process.Kill()
		<-done
	}, nil
}
