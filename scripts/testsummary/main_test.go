package main

import (
	"os"
	"strings"
	"testing"
)

// testdata/sample.json is real `go test -json` output (a build failure, a
// failing subtest, skips, a timeout) with the timestamps and most of the
// goroutine dump dropped, plus a passing package and a line that is not JSON.

func TestRender(t *testing.T) {
	f, err := os.Open("testdata/sample.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	if err := render(f, &b); err != nil {
		t.Fatal(err)
	}
	want := `# sj/b [sj/b.test]
b/b.go:2:23: cannot use "s" (untyped string constant) as int value in return statement
FAIL	sj/b [build failed]
--- FAIL: TestFail/sub (0.00s)
    a_test.go:6: boom
--- FAIL: TestFail (0.00s)
FAIL
FAIL	sj/a	0.002s
--- FAIL: TestSlow (did not finish)
    d_test.go:3: sleeping
panic: test timed out after 3s
	running tests:
		TestSlow (3s)
FAIL	sj/d	3.017s
ok  	sj/ok	0.010s
?   	sj/none	[no test files]
not json: a line from somewhere else
`
	if b.String() != want {
		t.Errorf("render:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSummary(t *testing.T) {
	f, err := os.Open("testdata/sample.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	if err := summary(f, &b, "sj/"); err != nil {
		t.Fatal(err)
	}
	want := `skipped tests:
  a TestFail/sk: sub skip 1
  a TestSkip: needs root
failed tests:
  a TestFail/sub
  a TestFail
  d TestSlow (did not finish)
  b: build failed
tests: 3 passed, 4 failed, 2 skipped
`
	if b.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSummaryNone(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"pass","Package":"p","Test":"TestA","Elapsed":0}
{"Action":"pass","Package":"p","Elapsed":0}
`
	var b strings.Builder
	if err := summary(strings.NewReader(in), &b, ""); err != nil {
		t.Fatal(err)
	}
	if want := "skipped tests: none\ntests: 1 passed, 0 failed, 0 skipped\n"; b.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestReason(t *testing.T) {
	for _, c := range []struct{ out, want string }{
		{"=== RUN   TestX\n    x_test.go:3: first log\n    x_test.go:4: needs root\n--- SKIP: TestX (0.00s)\n", "needs root"},
		{"    x_test.go:4: two\n        lines\n--- SKIP: TestX (0.00s)\n", "two lines"},
		{"=== RUN   TestX\n--- SKIP: TestX (0.00s)\n", "(no reason given)"},
	} {
		if got := reason(c.out); got != c.want {
			t.Errorf("reason(%q) = %q, want %q", c.out, got, c.want)
		}
	}
}
