// memsum is the job of the post-copy e2e tests: it fills N MiB with a
// deterministic pseudo-random pattern, prints "sum HEX" (SHA-256 of all of
// it), then a counter 0, 1, 2, ... every 20 ms. Whenever the file CHECK
// exists (it removes it) it prints "sum HEX" of its memory again, read
// afresh, which after a post-copy move fetches every page from the source;
// when STOP exists it prints "end" and exits 0.
//
//	memsum MiB CHECK STOP
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: memsum MiB CHECK STOP")
		os.Exit(2)
	}
	mb, err := strconv.Atoi(os.Args[1])
	if err != nil || mb <= 0 {
		fmt.Fprintln(os.Stderr, "memsum: MiB must be a positive number")
		os.Exit(2)
	}
	check, stop := os.Args[2], os.Args[3]
	mem := make([]byte, mb<<20)
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i < len(mem); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(mem[i:], x)
	}
	sum := func() { fmt.Printf("sum %x\n", sha256.Sum256(mem)) }
	sum()
	for n := 0; ; n++ {
		if _, err := os.Stat(stop); err == nil {
			fmt.Println("end")
			return
		}
		if _, err := os.Stat(check); err == nil {
			os.Remove(check)
			sum()
		}
		fmt.Println(n)
		time.Sleep(20 * time.Millisecond)
	}
}
