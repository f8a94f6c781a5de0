// Command cvipbackend is the HTTP backend of the cluster virtual IP's
// end-to-end test and benchmark (test/e2e/cvip_test.go, bench/cvip.sh):
// GET / answers its name (so a client can count which node served it),
// GET /bulk?bytes=N sends N bytes, GET /healthz answers ok.
// "cvipbackend get URL N" is the client: N requests, each on a new
// connection, then one line of JSON counting the answers by body
// (failures as "error").
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
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

func main() {
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
