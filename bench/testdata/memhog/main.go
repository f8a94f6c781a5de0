// memhog is the job of the migration benchmark: it holds N MiB of memory
// (touched, so that it is resident and CRIU must copy it) and prints a
// counter every 20 ms until killed.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	mb, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage: memhog MiB")
		os.Exit(2)
	}
	mem := make([]byte, mb<<20)
	for i := range mem {
		mem[i] = byte(i)
	}
	fmt.Println("ready")
	for n := 0; ; n++ {
		time.Sleep(20 * time.Millisecond)
		fmt.Println(n, mem[n%len(mem)])
	}
}
