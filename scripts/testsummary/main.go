// Command testsummary reads the JSON event stream of `go test -json` and
// either renders it as the readable output of a plain `go test` run, or
// summarises it: the tests that were skipped (with their reasons), the tests
// that failed, and a closing count line.
//
// Usage:
//
//	go test -json ./... | testsummary render
//	testsummary [-trim PREFIX] summary FILE
//
// render prints every package's result lines (ok, FAIL, "no test files"),
// build errors, whatever a test binary printed outside any test, and the
// full output of every failing test; the output of tests that passed or
// were skipped is left out, as plain `go test` does. Lines that are not
// JSON are copied through unchanged.
//
// summary prints "skipped tests:" followed by one "package Test: reason"
// line per skipped test (or "skipped tests: none"), "failed tests:" in the
// same way when any failed, and ends with "tests: N passed, N failed,
// N skipped". A package that failed without a failing test (a build error,
// a crash outside any test) counts as one failure.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of `go test -json` (see `go doc cmd/test2json`) or of
// the build events that `go test -json` interleaves with it.
type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
	ImportPath  string // build-output and build-fail events
}

type key struct{ pkg, test string }

func main() {
	trim := flag.String("trim", "", "prefix (such as the module path and a slash) to drop from package paths in the summary")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: testsummary render <go-test.json\n       testsummary [-trim PREFIX] summary FILE")
		flag.PrintDefaults()
	}
	flag.Parse()
	var err error
	switch {
	case flag.NArg() == 1 && flag.Arg(0) == "render":
		err = render(os.Stdin, os.Stdout)
	case flag.NArg() == 2 && flag.Arg(0) == "summary":
		var f *os.File
		if f, err = os.Open(flag.Arg(1)); err == nil {
			err = summary(f, os.Stdout, *trim)
			f.Close()
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
}

// scan calls fn for each JSON event of r, and raw for each line that is not
// one.
func scan(r io.Reader, fn func(event), raw func(string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var ev event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &ev) != nil || ev.Action == "" {
			raw(line)
			continue
		}
		fn(ev)
	}
	return sc.Err()
}

// framing reports whether line is one of the lines with which the testing
// package marks where a test runs, pauses and resumes; plain `go test` does
// not show them.
func framing(line string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

func render(r io.Reader, w io.Writer) error {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	out := map[key]*strings.Builder{}
	var order []key // tests with buffered output, in the order they started
	// flush prints a failing test's output, its "--- FAIL" line first.
	flush := func(k key) {
		b := out[k]
		if b == nil {
			return
		}
		delete(out, k)
		text := strings.TrimSuffix(b.String(), "\n")
		var head string
		var body []string
		for _, l := range strings.Split(text, "\n") {
			switch {
			case framing(l):
			case head == "" && strings.HasPrefix(l, "--- FAIL: "+k.test+" "):
				head = l
			default:
				body = append(body, l)
			}
		}
		if head == "" {
			head = "--- FAIL: " + k.test + " (did not finish)"
		}
		fmt.Fprintln(bw, head)
		for _, l := range body {
			fmt.Fprintln(bw, l)
		}
	}
	flushPkg := func(pkg string) {
		for _, k := range order {
			if k.pkg == pkg {
				flush(k)
			}
		}
	}
	err := scan(r, func(ev event) {
		switch ev.Action {
		case "build-output":
			fmt.Fprint(bw, ev.Output)
		case "output":
			if ev.Test == "" {
				if strings.HasPrefix(ev.Output, "FAIL\t"+ev.Package) {
					// The package's result line: show first the output
					// of the tests it was still running (a timeout, a
					// crash, an os.Exit).
					flushPkg(ev.Package)
				}
				if ev.Output != "PASS\n" {
					fmt.Fprint(bw, ev.Output)
				}
				break
			}
			k := key{ev.Package, ev.Test}
			if out[k] == nil {
				out[k] = &strings.Builder{}
				order = append(order, k)
			}
			out[k].WriteString(ev.Output)
		case "pass", "skip":
			delete(out, key{ev.Package, ev.Test})
		case "fail":
			if ev.Test != "" {
				flush(key{ev.Package, ev.Test})
				break
			}
			flushPkg(ev.Package)
		}
		if ev.Test == "" && (ev.Action == "pass" || ev.Action == "fail" || ev.Action == "skip") {
			kept := order[:0]
			for _, k := range order {
				if k.pkg != ev.Package {
					kept = append(kept, k)
				}
			}
			order = kept
		}
		bw.Flush()
	}, func(line string) {
		fmt.Fprintln(bw, line)
		bw.Flush()
	})
	return err
}

// logLine matches the first line of a t.Log, t.Skip or t.Error message as
// printed under `go test -json`; its further lines are indented deeper.
var logLine = regexp.MustCompile(`^ {4}\S+\.go:\d+: (.*)$`)

// reason returns the last message a test logged: for a skipped test, what
// it gave t.Skip.
func reason(output string) string {
	var msg []string
	for _, l := range strings.Split(output, "\n") {
		if m := logLine.FindStringSubmatch(l); m != nil {
			msg = []string{m[1]}
		} else if msg != nil && strings.HasPrefix(l, "        ") {
			msg = append(msg, strings.TrimSpace(l))
		}
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	return strings.Join(msg, " ")
}

func summary(r io.Reader, w io.Writer, trim string) error {
	out := map[key]*strings.Builder{}
	var skipped, failed []string
	passed := 0
	failedTests := map[string]bool{} // packages with a failing test
	var failedPkgs []string
	running := map[key]bool{}
	err := scan(r, func(ev event) {
		pkg := strings.TrimPrefix(ev.Package, trim)
		k := key{ev.Package, ev.Test}
		switch ev.Action {
		case "run":
			running[k] = true
		case "output":
			if ev.Test != "" {
				if out[k] == nil {
					out[k] = &strings.Builder{}
				}
				out[k].WriteString(ev.Output)
			}
		case "pass":
			if ev.Test != "" {
				passed++
			}
		case "skip":
			if ev.Test != "" {
				var o string
				if out[k] != nil {
					o = out[k].String()
				}
				skipped = append(skipped, fmt.Sprintf("%s %s: %s", pkg, ev.Test, reason(o)))
			}
		case "fail":
			if ev.Test != "" {
				failed = append(failed, pkg+" "+ev.Test)
				failedTests[ev.Package] = true
				break
			}
			// Tests that were still running when the package failed (a
			// timeout, a crash) failed too.
			var unfinished []string
			for r := range running {
				if r.pkg == ev.Package {
					unfinished = append(unfinished, pkg+" "+r.test+" (did not finish)")
					delete(running, r)
				}
			}
			sort.Strings(unfinished)
			failed = append(failed, unfinished...)
			if len(unfinished) > 0 {
				failedTests[ev.Package] = true
			}
			if !failedTests[ev.Package] {
				what := "failed outside any test"
				if ev.FailedBuild != "" {
					what = "build failed"
				}
				failedPkgs = append(failedPkgs, pkg+": "+what)
			}
		}
		if ev.Action == "pass" || ev.Action == "fail" || ev.Action == "skip" {
			delete(out, k)
			delete(running, k)
		}
	}, func(string) {})
	if err != nil {
		return err
	}
	sort.Strings(skipped)
	if len(skipped) == 0 {
		fmt.Fprintln(w, "skipped tests: none")
	} else {
		fmt.Fprintln(w, "skipped tests:")
		for _, s := range skipped {
			fmt.Fprintln(w, "  "+s)
		}
	}
	if len(failed)+len(failedPkgs) > 0 {
		fmt.Fprintln(w, "failed tests:")
		for _, s := range append(failed, failedPkgs...) {
			fmt.Fprintln(w, "  "+s)
		}
	}
	fmt.Fprintf(w, "tests: %d passed, %d failed, %d skipped\n", passed, len(failed)+len(failedPkgs), len(skipped))
	return nil
}
