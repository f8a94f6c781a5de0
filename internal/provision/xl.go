package provision

import (
	"fmt"
	"strconv"
	"strings"
)

// The xl configuration syntax (xl.cfg(5), parsed by libxlutil) is a list of
// "key = value" lines. A value is a number, a string in double or single
// quotes, or a list [v, v, ...]. Inside quotes a backslash escapes the
// quote characters, the backslash itself and a, b, f, n, r, t, v as in C;
// every other byte except NUL and newline stands for itself (bytes from
// 0x80 up included). libxlutil rejects \x.. and \NNN numeric escapes in
// practice, so they are never written, and NUL cannot be represented at all.

// XLQuote returns s as an xl double-quoted string. It fails only if s
// contains a NUL byte, which xl cannot represent.
func XLQuote(s string) (string, error) {
	return xlQuote(s, '"')
}

// XLList returns items as an xl list of single-quoted strings, in the
// how-to's style: ['a','b'].
func XLList(items []string) (string, error) {
	var b strings.Builder
	b.WriteByte('[')
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		q, err := xlQuote(it, '\'')
		if err != nil {
			return "", err
		}
		b.WriteString(q)
	}
	b.WriteByte(']')
	return b.String(), nil
}

func xlQuote(s string, quote byte) (string, error) {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte(quote)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case 0:
			return "", fmt.Errorf("%w: %q contains a NUL byte, which an xl configuration cannot represent", ErrInvalid, s)
		case '\\', quote:
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\a':
			b.WriteString(`\a`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\v':
			b.WriteString(`\v`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(quote)
	return b.String(), nil
}

// validXLKey reports whether k is an xl identifier: [a-z][_0-9a-z]*.
func validXLKey(k string) bool {
	if k == "" || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// xlWriter accumulates assignments; the first error sticks.
type xlWriter struct {
	b   strings.Builder
	err error
}

func (w *xlWriter) line(key, value string, err error) {
	if w.err != nil {
		return
	}
	if err != nil {
		w.err = fmt.Errorf("xl key %s: %w", key, err)
		return
	}
	if !validXLKey(key) {
		w.err = fmt.Errorf("%w: %q is not an xl key", ErrInvalid, key)
		return
	}
	w.b.WriteString(key)
	w.b.WriteString(" = ")
	w.b.WriteString(value)
	w.b.WriteByte('\n')
}

func (w *xlWriter) str(key, v string) {
	q, err := XLQuote(v)
	w.line(key, q, err)
}

func (w *xlWriter) int(key string, v int) {
	if v < 0 { // the xl grammar has no negative numbers
		w.line(key, "", fmt.Errorf("%w: negative number %d", ErrInvalid, v))
		return
	}
	w.line(key, strconv.Itoa(v), nil)
}

func (w *xlWriter) list(key string, items ...string) {
	l, err := XLList(items)
	w.line(key, l, err)
}

// comment writes "# text"; text must be a single line.
func (w *xlWriter) comment(text string) {
	if w.err == nil && strings.ContainsAny(text, "\r\n\x00") {
		w.err = fmt.Errorf("%w: comment %q spans lines", ErrInvalid, text)
	}
	if w.err == nil {
		w.b.WriteString("# " + text + "\n")
	}
}

// xlDiskSpec returns an xl disk specification for a raw image. It uses the
// how-to's positional form "file:PATH,VDEV,w" when PATH has no ',' or '=',
// which that form cannot carry, and otherwise the keyword form with
// target= last, which takes the rest of the specification verbatim
// (xl-disk-configuration(5)).
func xlDiskSpec(path, vdev string) string {
	if !strings.ContainsAny(path, ",=") {
		return "file:" + path + "," + vdev + ",w"
	}
	return "format=raw,vdev=" + vdev + ",access=w,target=" + path
}

// xlVIFSpec returns the xl network interface specification.
func xlVIFSpec(mac, bridge string) string {
	s := "mac=" + mac
	if bridge != "" {
		s += ",bridge=" + bridge
	}
	return s
}

// XLConfig renders node n's xl configuration, the how-to's per-node file:
// kernel, ramdisk, memory, name, disk (an init node: its root image as
// hda1 and its swap as hda2; any other node: only its swap as hda2), root,
// vif with the node's MAC, for init nodes ip/netmask/gateway, and extra
// with the kernel command line. xl (unlike xm) ignores ip/netmask/gateway,
// so for init nodes the same settings also go into extra as the kernel's
// ip= parameter.
func XLConfig(n Node, o GuestOptions) ([]byte, error) {
	o, err := prepare(n, o)
	if err != nil {
		return nil, err
	}
	dir := o.ImagesDir
	root := o.RootDevice
	if root == "" {
		root = "/dev/hda1"
	}
	extra, err := cmdline(n, o)
	if err != nil {
		return nil, err
	}
	var disks []string
	if n.InitNode {
		disks = append(disks, xlDiskSpec(RootImagePath(dir, n), "hda1"))
	}
	disks = append(disks, xlDiskSpec(SwapImagePath(dir, n), "hda2"))

	var w xlWriter
	w.comment(fmt.Sprintf("xl configuration of ssi node %d (%s), written by ssi xen-config.", n.Num, n.Name))
	w.comment(fmt.Sprintf("Start it with: xl create -c %s.cfg", n.Name))
	w.str("kernel", o.Kernel)
	w.str("ramdisk", o.Ramdisk)
	w.int("memory", o.MemoryMB)
	w.str("name", n.Name)
	w.list("disk", disks...)
	w.str("root", root+" ro")
	w.list("vif", xlVIFSpec(n.HWAddr, o.Bridge))
	if n.InitNode {
		w.str("ip", n.IPAddr.String())
		if o.Netmask.IsValid() {
			w.str("netmask", o.Netmask.String())
		}
		if o.Gateway.IsValid() {
			w.str("gateway", o.Gateway.String())
		}
	}
	if extra != "" {
		w.str("extra", extra)
	}
	if w.err != nil {
		return nil, fmt.Errorf("xl configuration of %s: %w", n, w.err)
	}
	return []byte(w.b.String()), nil
}
