package devcluster

import (
	"errors"
	"net/netip"
	"os"
)

// isolation is the network of an --isolate cluster.
type isolation struct{}

func newIsolation(dir string, n int) (*isolation, error) {
	return nil, errors.New("--isolate is not implemented yet")
}

func (i *isolation) addr(k int) netip.Addr { return netip.Addr{} }

func (i *isolation) start(o Options, k int, args []string, log *os.File) error {
	return errors.New("--isolate is not implemented yet")
}

func cleanupIsolation(dir string) error { return nil }
