package migrate

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// chunks is a stream of messages in memory.
type chunks struct{ msgs []*ssiv1.MigrateChunk }

func (c *chunks) Send(m *ssiv1.MigrateChunk) error {
	m.Data = bytes.Clone(m.Data)
	c.msgs = append(c.msgs, m)
	return nil
}

func (c *chunks) recv() (*ssiv1.MigrateChunk, error) {
	if len(c.msgs) == 0 {
		return nil, io.EOF
	}
	m := c.msgs[0]
	c.msgs = c.msgs[1:]
	return m, nil
}

// The images and the log arrive as they were sent, in chunks no larger
// than chunkSize; the commit that follows the archive is not part of it.
func TestTransferRoundTrip(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 3*chunkSize/16+7)
	files := map[string][]byte{"pages-1.img": big, "core-1.img": []byte("core"), "empty.img": nil}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(src, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(src, "dump.log"), []byte("criu's own log stays here"), 0o600)
	logPath := filepath.Join(t.TempDir(), "job.log")
	os.WriteFile(logPath, []byte("1\n2\n3\n"), 0o600)

	st := &chunks{}
	var told []int64
	n, err := send(st, &ssiv1.MigrateHeader{Cpid: 2000001}, src, logPath, func(b int64) { told = append(told, b) })
	if err != nil {
		t.Fatal(err)
	}
	if st.msgs[0].Header == nil || st.msgs[0].Header.Cpid != 2000001 {
		t.Fatalf("first message %v: want the header", st.msgs[0])
	}
	var sum int64
	for _, m := range st.msgs[1:] {
		if len(m.Data) > chunkSize {
			t.Errorf("a chunk of %d bytes", len(m.Data))
		}
		sum += int64(len(m.Data))
	}
	if sum != n || n < int64(len(big)) {
		t.Errorf("send reported %d bytes, the chunks hold %d", n, sum)
	}
	if len(told) == 0 || told[len(told)-1] > n {
		t.Errorf("progress told %v of %d bytes", told, n)
	}
	st.Send(&ssiv1.MigrateChunk{Commit: true})
	st.msgs = st.msgs[1:]
	cr := &chunkReader{recv: st.recv}
	gotLog := filepath.Join(t.TempDir(), "copy.log")
	if err := receive(cr, dst, gotLog); err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		if got, err := os.ReadFile(filepath.Join(dst, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (%v), want %d", name, len(got), err, len(want))
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "dump.log")); err == nil {
		t.Error("CRIU's dump log was sent")
	}
	if b, _ := os.ReadFile(gotLog); string(b) != "1\n2\n3\n" {
		t.Errorf("log %q", b)
	}
	if len(st.msgs) != 1 || !st.msgs[0].Commit {
		t.Errorf("the archive's reader consumed the commit: %d messages left", len(st.msgs))
	}
}

// An archive entry that would leave the staging directory, or is not a
// plain file, or a second header, is refused.
func TestReceiveRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  tar.Header
	}{
		{"parent", tar.Header{Name: "../x", Typeflag: tar.TypeReg}},
		{"absolute", tar.Header{Name: "/etc/passwd", Typeflag: tar.TypeReg}},
		{"subdir", tar.Header{Name: "a/b", Typeflag: tar.TypeReg}},
		{"symlink", tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}},
		{"log without a log", tar.Header{Name: logEntry, Typeflag: tar.TypeReg}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			if err := tw.WriteHeader(&tc.hdr); err != nil {
				t.Fatal(err)
			}
			tw.Close()
			dir := t.TempDir()
			if err := receive(&buf, dir, ""); err == nil {
				t.Error("accepted")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("wrote %v", ents)
			}
		})
	}
	cr := &chunkReader{recv: (&chunks{msgs: []*ssiv1.MigrateChunk{{Header: &ssiv1.MigrateHeader{}}}}).recv}
	if _, err := io.ReadAll(cr); err == nil || !strings.Contains(err.Error(), "second header") {
		t.Errorf("a second header: %v", err)
	}
}

// A node's staging directory goes once its last checkpoint went (they
// would pile up in /dev/shm, one per node and data directory).
func TestUnstageRemovesTheEmptyBase(t *testing.T) {
	m := &Migrator{cfg: Config{Self: 7, DataDir: t.TempDir()}}
	base := m.stagingBase()
	t.Cleanup(func() { os.RemoveAll(base) })
	a, err := m.stage("out", 2000001)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.stage("in", 2000002)
	if err != nil {
		t.Fatal(err)
	}
	unstage(a)
	if _, err := os.Stat(b); err != nil {
		t.Fatalf("another checkpoint's directory went with the first: %v", err)
	}
	unstage(b)
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the empty staging directory %s is left: %v", base, err)
	}
	c, err := m.stage("out", 2000003) // made again when needed
	if err != nil {
		t.Fatal(err)
	}
	unstage(c)
}
