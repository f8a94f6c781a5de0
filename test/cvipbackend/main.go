// Command cvipbackend is the HTTP backend of the cluster virtual IP's
// end-to-end test and benchmark (test/e2e/cvip_test.go, bench/cvip.sh):
// GET / answers its name (so a client can count which node served it),
// GET /bulk?bytes=N sends N bytes, GET /healthz answers ok.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
)

func main() {
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
