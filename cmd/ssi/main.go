// Command ssi is the single multi-call binary of the ssi cluster: the node
// daemon and every command-line tool. Invoked through a symlink named after an
// OpenSSI command (cluster, onnode, clusternode_num, ssi-addnode, ...) it runs
// that command; otherwise the first argument names the command.
package main

import (
	"os"

	"github.com/ssi-cluster/ssi/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args))
}
