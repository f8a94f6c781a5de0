package cli

import (
	"flag"
	"os"

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

// control returns a client of the daemon at socket.
func control(socket string) ssiv1connect.ControlClient {
	return ssiv1connect.NewControlClient(transport.NewUnixClient(socket), "http://ssi")
}
