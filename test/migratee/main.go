// Command migratee is the multi-threaded Go program of the migration tests
// (test/e2e/migrate_lang_test.go): N workers, each locked to an OS thread
// of its own, count as fast as they can, while the main goroutine prints
// 0, 1, 2, ... every 20 ms until the file named by its first argument
// exists. Then it prints "end" and exits with status 3. Each worker checks
// that its counter only ever goes up by one (a restore that lost a
// thread's registers or memory would show): the program exits 4 if one
// did not, 5 if a worker never counted.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

const workers = 4

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: migratee STOPFILE")
		os.Exit(2)
	}
	stop := os.Args[1]
	runtime.GOMAXPROCS(workers + 1)
	var counts [workers]atomic.Int64
	var broken atomic.Bool
	for w := range workers {
		go func() {
			runtime.LockOSThread() // a thread of its own
			var mine int64
			for {
				next := mine + 1
				if counts[w].Add(1) != next {
					broken.Store(true)
				}
				mine = next
				if mine%1024 == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		fmt.Println(i)
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("end")
	if broken.Load() {
		os.Exit(4)
	}
	for w := range workers {
		if counts[w].Load() == 0 {
			os.Exit(5)
		}
	}
	os.Exit(3)
}
