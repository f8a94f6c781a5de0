package cli

import (
	"flag"
	"os"
	"sync"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/node"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// socketFlag adds --socket to a command that talks to the local daemon.
func socketFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("SSI_SOCKET")
	if def == "" {
		def = node.DefaultSocket
	}
	return fs.String("socket", def, "the local daemon's control socket (or set SSI_SOCKET)")
}

var controls sync.Map // socket path -> ssiv1connect.ControlClient

// control returns a client of the daemon at socket; calls in one process
// share its HTTP/2 connection (onall multiplexes every node's stream on it).
func control(socket string) ssiv1connect.ControlClient {
	if c, ok := controls.Load(socket); ok {
		return c.(ssiv1connect.ControlClient)
	}
	c, _ := controls.LoadOrStore(socket, ssiv1connect.NewControlClient(transport.NewUnixClient(socket), "http://ssi"))
	return c.(ssiv1connect.ControlClient)
}
