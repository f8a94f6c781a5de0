package vproc

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func mustCPID(t *testing.T, node int, seq uint64) CPID {
	t.Helper()
	c, err := Make(node, seq)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sampleProcs(t *testing.T) []Proc {
	now := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	job := mustCPID(t, 2, 17)
	return []Proc{
		// Deliberately out of order: the table is sorted by CPID.
		{CPID: mustCPID(t, 10, 3), Node: 10, PID: 31337, UID: 1000, User: "averyveryverylongname", State: "R",
			CPU: 99.95, RSS: 512 << 20, Start: now.Add(-3 * 24 * time.Hour), Time: 50*time.Hour + 3*time.Second,
			Cmd: "stress --cpu 1", Migratable: true},
		{CPID: job, Node: 2, PID: 4242, UID: 0, User: "root", State: "S", CPU: 0, RSS: 4 << 20,
			Start: now.Add(-90 * time.Minute), Time: 1500 * time.Millisecond, Cmd: "sh -c make -j8", Job: job},
		{CPID: mustCPID(t, 2, 18), Node: 5, PID: 77, PPID: job, Job: job, UID: 1000, State: "D", CPU: 12.34,
			RSS: 123456789, Start: time.Date(2025, 12, 31, 23, 0, 0, 0, time.UTC), Time: 61 * time.Second,
			Cmd: "cc1 -O2 x.c\x1b[2J", Migratable: true, Pinned: true},
		{CPID: mustCPID(t, 1, 1), Node: 1, PID: 1, UID: 0, User: "root", State: "S", Start: now.Add(-400 * 24 * time.Hour), Cmd: "init"},
		{CPID: mustCPID(t, 65535, MaxSeq), Node: 65535, PID: 2, UID: 4294967294, State: "Z", Start: now, Cmd: ""},
	}
}

func TestFormatGolden(t *testing.T) {
	now := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	for _, tc := range []struct {
		name string
		opts FormatOptions
	}{
		{"ps.golden", FormatOptions{Now: now}},
		{"ps_wide.golden", FormatOptions{Now: now, Wide: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			procs := sampleProcs(t)
			first := procs[0]
			if err := Format(&buf, procs, tc.opts); err != nil {
				t.Fatal(err)
			}
			if procs[0] != first {
				t.Error("Format reordered the caller's slice")
			}
			golden := filepath.Join("testdata", tc.name)
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("Format output differs from %s:\n got:\n%s\nwant:\n%s", golden, buf.Bytes(), want)
			}
		})
	}
}

func TestFormatEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := Format(&buf, nil, FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.String(), "CPID NODE PID USER STAT %CPU RSS START TIME CMD\n"; got != want {
		t.Errorf("empty table %q, want %q", got, want)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestFormatWriteError(t *testing.T) {
	if err := Format(failWriter{}, sampleProcs(t), FormatOptions{}); err == nil {
		t.Error("Format ignored a write error")
	}
}

func TestCPUTime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                              "00:00:00",
		-time.Second:                   "00:00:00",
		999 * time.Millisecond:         "00:00:00",
		61 * time.Second:               "00:01:01",
		23*time.Hour + 59*time.Minute:  "23:59:00",
		24 * time.Hour:                 "1-00:00:00",
		100*24*time.Hour + time.Second: "100-00:00:01",
	} {
		if got := cpuTime(d); got != want {
			t.Errorf("cpuTime(%v) = %q, want %q", d, got, want)
		}
	}
}
