package nodeaddr

import (
	_ "connectrpc.com/connect"
	_ "github.com/creack/pty"
	_ "github.com/hashicorp/raft"
	_ "github.com/hashicorp/raft-boltdb/v2"
	_ "github.com/insomniacslk/dhcp/dhcpv4/server4"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/term"
	_ "google.golang.org/protobuf/proto"
)
