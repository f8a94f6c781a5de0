package nsinit

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLookPath(t *testing.T) {
	root := t.TempDir()
	bin, other, work := filepath.Join(root, "bin"), filepath.Join(root, "other"), filepath.Join(root, "work")
	for _, d := range []string{bin, other, work, filepath.Join(work, "rel"), filepath.Join(bin, "adir")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, mode os.FileMode) {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(bin, "tool"), 0o755)
	write(filepath.Join(other, "tool"), 0o755)
	write(filepath.Join(bin, "plain"), 0o644)
	write(filepath.Join(other, "plain"), 0o755)
	write(filepath.Join(bin, "onlyplain"), 0o644)
	write(filepath.Join(work, "rel", "tool"), 0o755)
	write(filepath.Join(work, "local"), 0o755)

	path := bin + ":" + other
	for _, tc := range []struct {
		file, path, dir string
		want            string
		err             error
	}{
		{"tool", path, "", filepath.Join(bin, "tool"), nil},
		{"plain", path, "", filepath.Join(other, "plain"), nil}, // skips the non-executable one
		{"onlyplain", path, "", "", ErrNotExecutable},
		{"adir", path, "", "", ErrNotFound}, // a directory is not a command; the shell says not found too
		{"missing", path, "", "", ErrNotFound},
		{"tool", "rel", work, filepath.Join(work, "rel", "tool"), nil}, // relative PATH entry counts from dir
		{"local", ":" + bin, work, filepath.Join(work, "local"), nil},  // empty entry is the directory
		{"./local", "", work, filepath.Join(work, "local"), nil},       // slash: relative to dir
		{filepath.Join(bin, "tool"), "", "", filepath.Join(bin, "tool"), nil},
		{filepath.Join(bin, "plain"), "", "", "", ErrNotExecutable},
		{filepath.Join(bin, "adir"), "", "", "", ErrNotExecutable},
		{"/no/such", "", "", "", ErrNotFound},
		{"", path, "", "", ErrNotFound},
		{"tool", "", "", "", ErrNotFound},
	} {
		got, err := LookPath(tc.file, tc.path, tc.dir)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("LookPath(%q, %q, %q) = %q, %v; want %q, %v", tc.file, tc.path, tc.dir, got, err, tc.want, tc.err)
		}
	}
}

func TestCanEnter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create directories owned by other users")
	}
	root := t.TempDir()
	for _, d := range []string{root, filepath.Dir(root)} { // TempDir makes both 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name string, mode os.FileMode, uid, gid int) string {
		p := filepath.Join(root, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	open := mk("open", 0o755, 0, 0)
	owner := mk("owner", 0o700, 1000, 1000)
	group := mk("group", 0o070, 0, 2000)
	closed := mk("closed", 0o700, 0, 0)
	nested := filepath.Join(closed, "inner")
	if err := os.Mkdir(nested, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir  string
		cred Credential
		want bool
	}{
		{open, Credential{UID: 1000, GID: 1000}, true},
		{owner, Credential{UID: 1000, GID: 1000}, true},
		{owner, Credential{UID: 1001, GID: 1000}, false}, // group bits are 0
		{group, Credential{UID: 1000, GID: 2000}, true},
		{group, Credential{UID: 1000, GID: 1000, Groups: []uint32{2000}}, true},
		{group, Credential{UID: 1000, GID: 1000}, false},
		{nested, Credential{UID: 1000, GID: 1000}, false}, // a parent is closed
		{nested, Credential{UID: 0, GID: 0}, true},
		{filepath.Join(root, "missing"), Credential{UID: 1000}, false},
	} {
		if got := CanEnter(tc.dir, tc.cred); got != tc.want {
			t.Errorf("CanEnter(%s, %+v) = %v, want %v", tc.dir, tc.cred, got, tc.want)
		}
	}
}
