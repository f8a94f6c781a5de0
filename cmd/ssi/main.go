// Command ssi is the single multi-call binary of the ssi cluster: the node
// daemon and every command-line tool. Invoked through a symlink named after an
// OpenSSI command (cluster, onnode, clusternode_num, ssi-addnode, ...) it runs
// that command; otherwise the first argument names the command.
package main

import (
	"os"

	"github.com/ssi-cluster/ssi/internal/cli"
	"github.com/ssi-cluster/ssi/internal/netboot"
	"github.com/ssi-cluster/ssi/internal/nsinit"
)

func main() {
	// The job init (ssi __init) must own signals and children from the first
	// instruction: dispatch it before the CLI installs any handler.
	if len(os.Args) > 1 && os.Args[1] == nsinit.Command {
		os.Exit(nsinit.Main(os.Args[2:]))
	}
	// The same for PID 1 of an initramfs made by ssi mkinitrd (the kernel
	// runs it as /init, a name the CLI would take for 'ssi init') and for
	// the minimal root init of ssi vm; neither returns.
	if netboot.IsInit() {
		netboot.Init()
	}
	if len(os.Args) > 1 && os.Args[1] == netboot.RootInitCommand {
		netboot.RootInit()
	}
	os.Exit(cli.Main(os.Args))
}
