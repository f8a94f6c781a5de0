package mountinfo

import (
	"reflect"
	"testing"
)

func TestParse(t *testing.T) {
	table := `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:30 / /sys/fs/cgroup/freezer rw,nosuid master:7 - cgroup cgroup rw,freezer
41 22 0:41 / /tmp/a\040b/mnt/node2 rw,nosuid,nodev - fuse.cfs ssi-cfs rw,user_id=0,group_id=0
broken line
50 22 0:50 / /x rw -
`
	want := []Mount{
		{Dev: "254:0", Point: "/", FSType: "ext4", Source: "/dev/vda", SuperOptions: "rw"},
		{Dev: "0:30", Point: "/sys/fs/cgroup/freezer", FSType: "cgroup", Source: "cgroup", SuperOptions: "rw,freezer"},
		{Dev: "0:41", Point: "/tmp/a b/mnt/node2", FSType: "fuse.cfs", Source: "ssi-cfs", SuperOptions: "rw,user_id=0,group_id=0"},
	}
	if got := Parse(table); !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse:\n%+v\nwant\n%+v", got, want)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/fs/cgroup":         "/sys/fs/cgroup",
		`/mnt/with\040space`:     "/mnt/with space",
		`/a\011tab\134backslash`: "/a\ttab\\backslash",
		`/trailing\04`:           `/trailing\04`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadThisProcess(t *testing.T) {
	ms, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point == "/" {
			return
		}
	}
	t.Fatalf("no mount at / in %+v", ms)
}
