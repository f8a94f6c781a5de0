// Command fsops times the metadata-heavy part of bench/fs.sh: it creates N
// files of SIZE bytes in a fresh directory, then stats each, then unlinks
// each, one phase after the other, and prints the seconds of each phase as
// "create 1.234567", "stat ...", "unlink ..." lines (then removes the
// directory). Every file is opened, written and closed in the create phase,
// with no fsync: it is the cost of the operations, not of the device.
//
// Usage: fsops [-n 10000] [-size 1024] DIR   (DIR/fsops.PID must not exist)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	n := flag.Int("n", 10000, "number of files")
	size := flag.Int("size", 1024, "bytes in each file")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: fsops [-n N] [-size BYTES] DIR")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 || *n < 1 || *size < 0 {
		flag.Usage()
		os.Exit(2)
	}
	dir := filepath.Join(flag.Arg(0), "fsops."+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		fail(err)
	}
	data := bytes.Repeat([]byte{'x'}, *size)
	names := make([]string, *n)
	for i := range names {
		names[i] = filepath.Join(dir, fmt.Sprintf("f%06d", i))
	}

	phase := func(name string, op func(string) error) {
		start := time.Now()
		for _, p := range names {
			if err := op(p); err != nil {
				os.RemoveAll(dir)
				fail(fmt.Errorf("%s: %w", name, err))
			}
		}
		fmt.Printf("%s %.6f\n", name, time.Since(start).Seconds())
	}
	phase("create", func(p string) error {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	phase("stat", func(p string) error {
		fi, err := os.Lstat(p)
		if err == nil && fi.Size() != int64(*size) {
			err = fmt.Errorf("%s: size %d, wrote %d", p, fi.Size(), *size)
		}
		return err
	})
	phase("unlink", os.Remove)
	if err := os.Remove(dir); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fsops:", err)
	os.Exit(1)
}
