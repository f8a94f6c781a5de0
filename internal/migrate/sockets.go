package migrate

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ssi-cluster/ssi/internal/rexec"
)

// errInetSocket: a job that shares its node's network namespace cannot take
// an inet socket along (its address is the node's).
var errInetSocket = errors.New("it holds an inet (TCP/UDP) socket, and its address belongs to this node: a job without a network address of its own cannot keep its connections across a move")

// refuseInetSockets fails if a process of the job holds an inet socket.
func refuseInetSockets(j *rexec.Job) error {
	pids := append([]int{j.InitPid()}, j.Pids()...)
	socks := map[string]bool{}
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd"
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // gone meanwhile
		}
		for _, e := range ents {
			l, err := os.Readlink(dir + "/" + e.Name())
			if err == nil && strings.HasPrefix(l, "socket:[") {
				socks[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	if len(socks) == 0 {
		return nil
	}
	for _, t := range []string{"tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", j.InitPid(), t))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the heading
		for sc.Scan() {
			if fl := strings.Fields(sc.Text()); len(fl) > 9 && socks[fl[9]] {
				f.Close()
				return errInetSocket
			}
		}
		f.Close()
	}
	return nil
}
