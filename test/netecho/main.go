// Command netecho is the TCP service of the --net jobs' end-to-end test and
// benchmark (test/e2e/jobnet_test.go, bench/jobnet_bench_test.go).
//
// "netecho serve ADDR" listens on ADDR and echoes every line it reads back
// on the same connection; a new connection first gets "hello N", N counting
// the connections this process accepted (so a client can tell the same
// process from a fresh one).
//
// "netecho idle" prints "listening" and waits forever without a socket:
// the same program for a migration without --net to compare with.
//
// "netecho hello ADDR" connects, prints the greeting and exits.
//
// "netecho client ADDR [CONNS]" opens CONNS connections (1 by default) and
// keeps exchanging numbered messages on each, one at a time, checking that
// every answer is exactly the message sent (nothing lost, repeated or
// reordered). It reads commands on stdin: "count" prints how many
// exchanges succeeded so far; "stop" (or the end of stdin) prints
// "ok N" or "error: WHAT" and exits (0 or 1). The first failure stops the
// exchanges and is kept for that answer.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "idle" {
		fmt.Println("listening")
		select {}
	}
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: netecho serve ADDR | netecho idle | netecho hello ADDR | netecho client ADDR [CONNS]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2])
	case "hello":
		c, err := net.DialTimeout("tcp", os.Args[2], 5*time.Second)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		l, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Print(l)
	case "client":
		n := 1
		if len(os.Args) > 3 {
			v, err := strconv.Atoi(os.Args[3])
			if err != nil || v < 1 {
				fmt.Fprintln(os.Stderr, "netecho: CONNS must be a positive number")
				os.Exit(2)
			}
			n = v
		}
		client(os.Args[2], n)
	default:
		fmt.Fprintln(os.Stderr, "netecho: unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr string) {
	// Not multipath TCP, Go's default for listeners since 1.24: CRIU
	// cannot checkpoint an MPTCP socket (docs/JOBNET.md).
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netecho:", err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	var conns int
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netecho: accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		conns++
		go echo(c, conns)
	}
}

func echo(c net.Conn, n int) {
	defer c.Close()
	if _, err := fmt.Fprintf(c, "hello %d\n", n); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		l, err := r.ReadBytes('\n')
		if len(l) > 0 {
			if _, werr := c.Write(l); werr != nil {
				fmt.Printf("connection %d: %v\n", n, werr)
				return
			}
		}
		if err != nil {
			fmt.Printf("connection %d: %v\n", n, err)
			return
		}
	}
}

func client(addr string, n int) {
	var count atomic.Int64
	var mu sync.Mutex
	var failure error
	stop := make(chan struct{})
	fail := func(err error) {
		mu.Lock()
		if failure == nil {
			failure = err
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for k := range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			fmt.Println("error: no greeting:", err)
			os.Exit(1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				msg := fmt.Sprintf("%d.%d\n", k, i)
				// A move freezes the server for a while: generous, but
				// bounded, so a lost connection ends the test.
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write([]byte(msg)); err != nil {
					fail(fmt.Errorf("connection %d, message %d: %w", k, i, err))
					return
				}
				got, err := r.ReadString('\n')
				if err != nil {
					fail(fmt.Errorf("connection %d, message %d: %w", k, i, err))
					return
				}
				if got != msg {
					fail(fmt.Errorf("connection %d: sent %q, got %q back", k, msg, got))
					return
				}
				count.Add(1)
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "count" {
			mu.Lock()
			f := failure
			mu.Unlock()
			if f != nil {
				fmt.Println("error:", f)
			} else {
				fmt.Println(count.Load())
			}
			continue
		}
		if sc.Text() == "stop" {
			break
		}
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if failure != nil && !errors.Is(failure, net.ErrClosed) {
		fmt.Println("error:", failure)
		os.Exit(1)
	}
	fmt.Println("ok", count.Load())
}
