package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path"
	"sync"

	"connectrpc.com/connect"

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

var (
	controls       sync.Map // socket path -> ssiv1connect.ControlClient
	signalControls sync.Map // socket path -> ssiv1connect.ControlClient on its own connection
)

// control returns a client of the daemon at socket; calls in one process
// share its HTTP/2 connection (onall multiplexes every node's stream on it).
func control(socket string) ssiv1connect.ControlClient {
	return cachedControl(&controls, socket)
}

// signalControl is a client of the daemon at socket on a connection of its
// own: forwarded signals never share flow control with a stdin stream that
// the remote process is not reading.
func signalControl(socket string) ssiv1connect.ControlClient {
	return cachedControl(&signalControls, socket)
}

func cachedControl(m *sync.Map, socket string) ssiv1connect.ControlClient {
	if c, ok := m.Load(socket); ok {
		return c.(ssiv1connect.ControlClient)
	}
	c, _ := m.LoadOrStore(socket, ssiv1connect.NewControlClient(transport.NewUnixClient(socket), "http://ssi",
		connect.WithInterceptors(namesLostDaemon(socket))))
	return c.(ssiv1connect.ControlClient)
}

// namesLostDaemon makes a unary call that lost its connection say so: which
// daemon, during which call, and what to do.
func namesLostDaemon(socket string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			resp, err := next(ctx, req)
			if err != nil {
				err = lostDaemon(socket, path.Base(req.Spec().Procedure), err)
			}
			return resp, err
		}
	}
}

// lostDaemon wraps a transport failure of a call to the daemon at socket.
// A failed dial is left alone: its message already names the socket and
// says what to do.
func lostDaemon(socket, call string, err error) error {
	if !isTransport(err) || isDial(err) {
		return err
	}
	return fmt.Errorf("lost the connection to the ssi daemon at %s during %s (check that it still runs, e.g. with 'cluster -V' on another node, and try again): %w", socket, call, err)
}
