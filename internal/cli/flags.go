package cli

import (
	"flag"
	"fmt"
	"strings"
	"time"
)

// Flag types that refuse what the standard ones would silently change: a
// node number that does not fit, or that looks octal; a duration that is
// zero or negative.

// nodeNumValue is a node number in plain decimal (1 .. 4294967295).
type nodeNumValue uint32

func (v *nodeNumValue) String() string { return fmt.Sprint(uint32(*v)) }
func (v *nodeNumValue) Set(s string) error {
	n, err := parseNodeNum(s)
	if err != nil {
		return err
	}
	*v = nodeNumValue(n)
	return nil
}

// nodeNumFlag defines a node-number flag (0 when not given).
func nodeNumFlag(fs *flag.FlagSet, name, usage string) *uint32 {
	v := new(nodeNumValue)
	fs.Var(v, name, usage)
	return (*uint32)(v)
}

// ttlValue is a lifetime of at least a second.
type ttlValue time.Duration

func (v *ttlValue) String() string { return time.Duration(*v).String() }
func (v *ttlValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (e.g. 24h, 90m)", s)
	}
	if d < time.Second {
		return fmt.Errorf("%v is too short: a lifetime must be at least 1s", d)
	}
	*v = ttlValue(d)
	return nil
}

// ttlFlag defines a lifetime flag with a default.
func ttlFlag(fs *flag.FlagSet, name string, def time.Duration, usage string) *time.Duration {
	v := ttlValue(def)
	fs.Var(&v, name, usage)
	return (*time.Duration)(&v)
}

// validNodeNumText refuses signs, leading zeros (030 is not 24) and
// anything but decimal digits.
func validNodeNumText(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == "" && (s == "0" || s[0] != '0')
}
