// Command cvipbackend is the HTTP backend of the cluster virtual IP's
// end-to-end test and benchmark (test/e2e/cvip_test.go, bench/cvip.sh):
// GET / answers its name (so a client can count which node served it),
// GET /bulk?bytes=N sends N bytes, GET /healthz answers ok.
// "cvipbackend get URL N" is the client: N requests, each on a new
// connection, then one line of JSON counting the answers by body
// (failures as "error"). "cvipbackend hold HOST:PORT N [FIRSTPORT]" opens
// N connections (from local ports FIRSTPORT, FIRSTPORT+1, ... if given)
// and sends a request on each, then again on the same connections for
// every line it reads, printing a JSON array of the answers (or errors)
// each time: whether connections survive a change.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func get(url string, n int) {
	c := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	counts := map[string]int{}
	for range n {
		resp, err := c.Get(url)
		if err != nil {
			counts["error"]++
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			counts["error"]++
			continue
		}
		counts[strings.TrimSpace(string(b))]++
	}
	_ = json.NewEncoder(os.Stdout).Encode(counts)
}

func hold(addr string, n, first int) {
	type conn struct {
		c   net.Conn
		r   *bufio.Reader
		err error
	}
	conns := make([]*conn, n)
	for i := range conns {
		d := net.Dialer{Timeout: time.Second}
		if first > 0 {
			d.LocalAddr = &net.TCPAddr{Port: first + i}
		}
		c, err := d.Dial("tcp", addr)
		conns[i] = &conn{c: c, err: err}
		if err == nil {
			conns[i].r = bufio.NewReader(c)
		}
	}
	round := func() {
		out := make([]string, n)
		for i, c := range conns {
			if c.err == nil {
				// Right after a failover a request may wait for TCP to
				// retransmit (its first packets went to the dead director):
				// the question is whether the connection goes on, not how fast.
				_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
				_, c.err = fmt.Fprintf(c.c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
			}
			if c.err == nil {
				var resp *http.Response
				if resp, c.err = http.ReadResponse(c.r, nil); c.err == nil {
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					c.err = err
					out[i] = strings.TrimSpace(string(b))
				}
			}
			if c.err != nil {
				out[i] = "error: " + c.err.Error()
			}
		}
		_ = json.NewEncoder(os.Stdout).Encode(out)
	}
	round()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		round()
	}
}

func main() {
	if (len(os.Args) == 4 || len(os.Args) == 5) && os.Args[1] == "hold" {
		n, err := strconv.Atoi(os.Args[3])
		if err != nil || n < 1 || n > 1000 {
			log.Fatalf("hold HOST:PORT N [FIRSTPORT]: N must be 1..1000")
		}
		first := 0
		if len(os.Args) == 5 {
			if first, err = strconv.Atoi(os.Args[4]); err != nil || first < 1 || first+n > 65536 {
				log.Fatalf("hold HOST:PORT N [FIRSTPORT]: FIRSTPORT must be 1..%d", 65536-n)
			}
		}
		hold(os.Args[2], n, first)
		return
	}
	if len(os.Args) == 4 && os.Args[1] == "get" {
		n, err := strconv.Atoi(os.Args[3])
		if err != nil || n < 1 || n > 100000 {
			log.Fatalf("get URL N: N must be 1..100000")
		}
		get(os.Args[2], n)
		return
	}
	listen := flag.String("listen", ":8080", "address to listen on")
	name := flag.String("name", "", "name to answer with (default: the host name)")
	flag.Parse()
	if *name == "" {
		*name, _ = os.Hostname()
	}
	zeros := make([]byte, 1<<20)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, *name)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/bulk", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("bytes"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "bytes=N, 0..1GiB", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for n > 0 {
			k := min(n, len(zeros))
			if _, err := w.Write(zeros[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	log.Fatal(http.ListenAndServe(*listen, mux))
}
