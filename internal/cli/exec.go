package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// forwarded are the signals the CLI passes on to a remote process (without -t).
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

type execOpts struct {
	node   uint32 // 0: least loaded
	tty    bool
	pin    bool
	detach bool
	nodes  []uint32 // the nodes it may run on (ssi run --nodes)
	net    bool     // an address of its own that moves with it (--net)
	argv   []string
}

// runRemote runs one command through the local daemon and returns its exit
// code: the process's own, 128+signal, 127 for a missing command, 255 when
// ssi failed.
//
// stdin, stdin EOF and terminal resizes travel on the exec stream, in order.
// Forwarded signals do not: a remote process that does not read its input
// fills the stream's flow-control window, and a signal behind it would never
// arrive. Once the daemon has said which cluster PID the process got, each
// signal goes out of band, through Control.Signal on a connection of its own
// (the daemon routes it to the node that runs the job, as for ssi kill);
// signals that arrive before that are queued and sent right after it.
func runRemote(env *Env, socket string, o execOpts) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Without a terminal, the daemon takes this process's stdin, stdout
	// and stderr themselves (SCM_RIGHTS on a connection of their own) and
	// reads and writes them directly: nothing is copied here, and the
	// stream carries only the start and the end.
	client := control(socket)
	stdio := passableStdio(env, o)
	if stdio != nil {
		hc := transport.NewUnixFDClient(socket, stdio)
		defer hc.CloseIdleConnections()
		client = ssiv1connect.NewControlClient(hc, "http://ssi", connect.WithInterceptors(namesLostDaemon(socket)))
	}
	stream := client.Exec(ctx)
	var sendMu sync.Mutex
	send := func(m *ssiv1.ExecInput) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	stderr := &syncWriter{w: env.Stderr} // the output pump and the signal forwarder both write
	dir, _ := os.Getwd()
	spec := &ssiv1.ExecSpec{Argv: o.argv, Env: os.Environ(), Dir: dir, Tty: o.tty, Pin: o.pin, Detach: o.detach, Node: o.node, Nodes: o.nodes, Net: o.net, StdioPassed: stdio != nil}
	stdinFile, _ := env.Stdin.(*os.File)
	var restore func()
	if o.tty {
		if stdinFile == nil || !term.IsTerminal(int(stdinFile.Fd())) {
			return Usagef("-t needs a terminal on standard input")
		}
		if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
			spec.Cols, spec.Rows = uint32(w), uint32(h)
		}
		st, err := term.MakeRaw(int(stdinFile.Fd()))
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		restore = func() { _ = term.Restore(int(stdinFile.Fd()), st) }
		defer restore()
	}
	// failed explains a stream that ended without the process's status.
	var started *ssiv1.ExecStarted
	failed := func(err error) error {
		const check = "check that the daemon still runs, e.g. with 'cluster -V' on another node"
		var re *RemoteError
		switch {
		case isDial(err):
			return err // names the socket and says what to do
		case started != nil:
			return fmt.Errorf("lost the connection to the ssi daemon at %s while process %d (%s) ran on node %d (%s), which hangs it up (%s): %w",
				socket, started.Cpid, o.argv[0], started.Node, started.NodeName, check, err)
		case isTransport(err) || errors.As(err, &re):
			return fmt.Errorf("lost the connection to the ssi daemon at %s before %s started (%s): %w", socket, o.argv[0], check, err)
		default: // the daemon's answer, such as a refusal
			return fmt.Errorf("could not start %s through the ssi daemon at %s: %w", o.argv[0], socket, err)
		}
	}
	if err := send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Start{Start: spec}}); err != nil {
		return failed(receiveErr(stream, err))
	}
	sigs := make(chan os.Signal, 8)
	if o.tty {
		// Keys (Ctrl-C, Ctrl-\) reach the remote terminal as bytes; signals
		// sent to this process still go to the remote process group, and
		// the deferred restore puts the local terminal back.
		signal.Notify(sigs, syscall.SIGWINCH, syscall.SIGTERM, syscall.SIGHUP)
	} else if !o.detach {
		signal.Notify(sigs, forwarded...)
	}
	defer signal.Stop(sigs)
	cpids := make(chan int64, 1)
	resizes := make(chan struct{}, 1)
	go forwardSignals(ctx, env, stderr, socket, sigs, cpids, resizes)
	if o.tty {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-resizes:
				}
				if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
					_ = send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Resize{Resize: &ssiv1.Resize{Rows: uint32(h), Cols: uint32(w)}}})
				}
			}
		}()
	}
	pumpStdin := func() {
		go func() {
			buf := make([]byte, 256<<10)
			for {
				n, err := env.Stdin.Read(buf)
				if n > 0 {
					if send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}) != nil {
						return
					}
				}
				if err != nil {
					_ = send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_StdinEof{StdinEof: true}})
					return
				}
			}
		}()
	}
	if !o.detach && stdio == nil {
		pumpStdin()
	}
	for {
		m, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			err = &RemoteError{Err: errors.New("the daemon ended the stream without the process's exit status")}
		}
		if err != nil {
			return failed(err)
		}
		switch v := m.Msg.(type) {
		case *ssiv1.ExecOutput_Started:
			if o.detach {
				fmt.Fprintln(env.Stdout, v.Started.Cpid)
				return nil
			}
			if started == nil {
				started = v.Started
				cpids <- v.Started.Cpid
				if stdio != nil && !v.Started.StdioPassed {
					pumpStdin() // a daemon that did not take them: stream
				}
			}
		case *ssiv1.ExecOutput_Stdout:
			if _, err := env.Stdout.Write(v.Stdout); err != nil {
				return fmt.Errorf("write the output of process %d: %w", started.GetCpid(), err)
			}
		case *ssiv1.ExecOutput_Stderr:
			stderr.Write(v.Stderr)
		case *ssiv1.ExecOutput_Exit:
			stream.CloseRequest()
			if v.Exit.Code == 0 {
				return nil
			}
			return &ExitError{Code: int(v.Exit.Code)}
		case *ssiv1.ExecOutput_Error:
			stream.CloseRequest()
			if restore != nil {
				restore()
			}
			return &ExitError{Code: int(v.Error.ExitCode), Err: errors.New(v.Error.Message)}
		}
	}
}

// passableStdio is the descriptors of this process's stdin, stdout and
// stderr when the daemon may take them: attached, without a terminal, all
// three open files, and SSI_STREAM_STDIO unset (which keeps the copy
// through the stream). nil otherwise.
func passableStdio(env *Env, o execOpts) []int {
	if o.tty || o.detach || os.Getenv("SSI_STREAM_STDIO") != "" {
		return nil
	}
	var fds []int
	for _, x := range []any{env.Stdin, env.Stdout, env.Stderr} {
		f, ok := x.(*os.File)
		if !ok {
			return nil
		}
		rc, err := f.SyscallConn() // not Fd: it would make the file blocking
		if err != nil {
			return nil
		}
		fd := -1
		if rc.Control(func(u uintptr) { fd = int(u) }) != nil || fd < 0 {
			return nil
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return nil // not open (sendmsg would fail): stream, where it reads as EOF
		}
		fds = append(fds, fd)
	}
	return fds
}

// forwardSignals passes the signals this process receives to the remote
// job, out of band (see runRemote): it waits for the job's cluster PID on
// cpids, queueing what arrives before, and hands SIGWINCH to the resizer.
func forwardSignals(ctx context.Context, env *Env, stderr io.Writer, socket string, sigs <-chan os.Signal, cpids <-chan int64, resizes chan<- struct{}) {
	var cpid int64
	var queued []syscall.Signal
	for {
		select {
		case <-ctx.Done():
			return
		case cpid = <-cpids:
			for _, s := range queued {
				deliverSignal(env, stderr, socket, cpid, s)
			}
			queued = nil
		case s := <-sigs:
			sig, _ := s.(syscall.Signal)
			switch {
			case sig == syscall.SIGWINCH:
				select {
				case resizes <- struct{}{}:
				default: // a resize is pending; it will read the newest size
				}
			case cpid == 0:
				queued = append(queued, sig)
			default:
				deliverSignal(env, stderr, socket, cpid, sig)
			}
		}
	}
}

// deliverSignal sends sig to job cpid through Control.Signal. A job that
// has just ended is not an error; any other failure is reported and the
// stream goes on (if the connection is lost, the stream says so too).
func deliverSignal(env *Env, stderr io.Writer, socket string, cpid int64, sig syscall.Signal) {
	// Not env.Ctx: the signal being forwarded may be the one that cancelled it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := signalControl(socket).Signal(ctx, connect.NewRequest(&ssiv1.SignalRequest{Cpid: cpid, Signal: int32(sig)}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		fmt.Fprintf(stderr, "%s: could not forward %v to process %d: %s\n", env.Prog, sig, cpid, message(err))
	}
}

// syncWriter serialises writes from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// receiveErr is the real error behind a failed Send: connect reports the
// stream's failure on Receive, and io.EOF on Send.
func receiveErr(s *connect.BidiStreamForClient[ssiv1.ExecInput, ssiv1.ExecOutput], err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := s.Receive(); rerr != nil {
			return rerr
		}
	}
	return err
}

func init() {
	cmd := &Command{
		Name:    "onnode",
		Link:    true,
		Summary: "run a command on node N, streaming its input and output",
		Usage:   "onnode [-t] [-p] [--net] N [--] CMD [ARGS...]",
		Help: `Runs CMD on node N as the calling user, in the current directory, with the
current environment (minus variables that name local resources, see
docs/PROCESSES.md). stdin, stdout and stderr are streamed both ways;
signals (INT, TERM, HUP, QUIT, USR1, USR2) are forwarded; the exit status is
the command's own (128+N when killed by signal N), 127 when it does not
exist and 255 when ssi failed (node unknown or DOWN, connection lost).
-t allocates a terminal on the node (interactive programs); -p pins the
process to its node (it will never be migrated). --net gives it a network
namespace and an address of its own from the cluster's pool, which move
with it, TCP connections included (ssi net, docs/JOBNET.md).

Examples:
  onnode 2 hostname
  tar cf - dir | onnode 3 tar xf - -C /tmp
  onnode -t 2 top`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		tty := fs.Bool("t", false, "allocate a terminal on the node")
		pin := fs.Bool("p", false, "pin the process to its node")
		netFlag := netFlag(fs)
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if *netFlag && *pin {
			return Usagef("-p and --net do not go together: a job's address moves with it, a pinned job never moves")
		}
		if fs.NArg() < 2 {
			return Usagef("expected a node number and a command")
		}
		num, err := parseNodeNum(fs.Arg(0))
		if err != nil {
			return err
		}
		argv := fs.Args()[1:]
		if argv[0] == "--" {
			argv = argv[1:]
		}
		if len(argv) == 0 {
			return Usagef("expected a command")
		}
		return runRemote(env, *socket, execOpts{node: num, tty: *tty, pin: *pin, net: *netFlag, argv: argv})
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "run",
		Summary: "run a command on the least-loaded node (detached with -d)",
		Usage:   "ssi run [-d] [-t] [-p] [-n N] [--nodes N,M,...] [--net] [--] CMD [ARGS...]",
		Help: `Like onnode, on the node fastnode names. With -d the command runs as a
detached job: ssi prints its cluster PID and returns; the output goes to a
log that 'ssi logs CPID [-f]' shows, and 'ssi wait CPID' returns its status.

--nodes limits the job to those nodes, now and after any move (migrate,
load leveling, expel keep it there). --net gives it a network namespace and
an address of its own that move with it (see onnode).

Examples:
  ssi run make -j4
  cpid=$(ssi run -d ./simulate --steps 1000); ssi logs -f $cpid; ssi wait $cpid
  ssi run -d --nodes 2,3 ./simulate`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		detach := fs.Bool("d", false, "detach: print the cluster PID and return")
		tty := fs.Bool("t", false, "allocate a terminal on the node")
		pin := fs.Bool("p", false, "pin the process to its node")
		node := fs.Uint("n", 0, "run on this node instead of the least-loaded one")
		nodesArg := fs.String("nodes", "", "the nodes the job may run on, now and after moves: N,M,...")
		netFlag := netFlag(fs)
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		nodes, err := parseNodeList(*nodesArg)
		if err != nil {
			return err
		}
		if *node != 0 && len(nodes) > 0 && !slices.Contains(nodes, uint32(*node)) {
			return Usagef("-n %d is not one of --nodes %s", *node, *nodesArg)
		}
		argv := fs.Args()
		if len(argv) > 0 && argv[0] == "--" {
			argv = argv[1:]
		}
		if len(argv) == 0 {
			return Usagef("expected a command")
		}
		if *detach && *tty {
			return Usagef("-d and -t do not go together")
		}
		if *netFlag && *pin {
			return Usagef("-p and --net do not go together: a job's address moves with it, a pinned job never moves")
		}
		return runRemote(env, *socket, execOpts{node: uint32(*node), tty: *tty, pin: *pin, detach: *detach, nodes: nodes, net: *netFlag, argv: argv})
	}
	Register(cmd)
}

// parseNodeList parses "2,3,5" ("" is none).
func parseNodeList(s string) ([]uint32, error) {
	if s == "" {
		return nil, nil
	}
	var out []uint32
	for _, f := range strings.Split(s, ",") {
		n, err := parseNodeNum(strings.TrimSpace(f))
		if err != nil {
			return nil, Usagef("--nodes %q: %v", s, err)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func loadsResp(env *Env, socket string) (*ssiv1.LoadsResponse, error) {
	resp, err := control(socket).Loads(env.Ctx, connect.NewRequest(&ssiv1.LoadsRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func init() {
	fast := &Command{
		Name:    "fastnode",
		Link:    true,
		Summary: "print the least-loaded UP node",
		Usage:   "fastnode [--socket PATH]",
		Help:    "Example:\n  onnode $(fastnode) make -j4",
	}
	fast.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, fast)
		socket := socketFlag(fs)
		if err := Parse(env, fast, fs, args); err != nil {
			return err
		}
		l, err := loadsResp(env, *socket)
		if err != nil {
			return err
		}
		if l.Fastest == 0 {
			return errors.New("no node is UP")
		}
		fmt.Fprintln(env.Stdout, l.Fastest)
		return nil
	}
	Register(fast)

	loads := &Command{
		Name:    "loads",
		Link:    true,
		Summary: "print every node's load",
		Usage:   "loads [-n N] [--json] [--socket PATH]",
		Help: `LOAD is max(CPU busy fraction, run queue / CPUs), averaged over ~10s, in the
spirit of MOSIX's load: 1.0 means the node's CPUs are fully used. On a local
cluster (ssi up) each node counts only the processes it runs.

Example:
  loads`,
	}
	loads.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, loads)
		n := fs.Uint("n", 0, "only this node")
		asJSON := fs.Bool("json", false, "print JSON")
		socket := socketFlag(fs)
		if err := Parse(env, loads, fs, args); err != nil {
			return err
		}
		l, err := loadsResp(env, *socket)
		if err != nil {
			return err
		}
		rows := l.Loads
		if *n != 0 {
			rows = nil
			for _, r := range l.Loads {
				if r.Num == uint32(*n) {
					rows = append(rows, r)
				}
			}
			if rows == nil {
				return fmt.Errorf("node %d is not in the node table", *n)
			}
		}
		if *asJSON {
			type row struct {
				Num      uint32  `json:"num"`
				Name     string  `json:"name"`
				State    string  `json:"state"`
				Load     float64 `json:"load"`
				RunQueue float64 `json:"run_queue"`
				CPUBusy  float64 `json:"cpu_busy"`
				NCPU     uint32  `json:"ncpu"`
				MemFree  uint64  `json:"mem_free"`
			}
			out := []row{}
			for _, r := range rows {
				out = append(out, row{r.Num, r.Name, r.State.Label(), r.Load, r.RunQueue, r.CpuBusy, r.Ncpu, r.MemFree})
			}
			return writeJSON(env.Stdout, out)
		}
		tw := tabwriter.NewWriter(env.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tNAME\tSTATE\tLOAD\tRUNQ\tCPU%\tNCPU\tMEMFREE")
		for _, r := range rows {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%.2f\t%.2f\t%.0f\t%d\t%dM\n", r.Num, r.Name, r.State.Label(), r.Load, r.RunQueue, 100*r.CpuBusy, r.Ncpu, r.MemFree>>20)
		}
		return tw.Flush()
	}
	Register(loads)
}

// lineWriter prefixes every complete line with a node label.
type lineWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		l.mu.Lock()
		fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf[:i])
		l.mu.Unlock()
		l.buf = l.buf[i+1:]
	}
}

func (l *lineWriter) flush() {
	if len(l.buf) > 0 {
		l.mu.Lock()
		fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf)
		l.mu.Unlock()
		l.buf = nil
	}
}

func init() {
	cmd := &Command{
		Name:    "onall",
		Link:    true,
		Summary: "run a command on every UP node in parallel",
		Usage:   "onall [-b] [-f FANOUT] [--] CMD [ARGS...]",
		Help: `Runs CMD on every UP node at once (at most FANOUT at a time, default 64),
prefixing each output line with the node number, like pdsh. -b gathers the
output and prints each distinct output once with the nodes that produced
it, like clush -b. The exit status is the largest of the nodes' statuses.
The processes are pinned to their nodes (see onnode -p).

Examples:
  onall hostname
  onall -b uname -r`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		gather := fs.Bool("b", false, "gather identical outputs")
		fanout := fs.Int("f", 64, "how many nodes to run on at once")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		argv := fs.Args()
		if len(argv) > 0 && argv[0] == "--" {
			argv = argv[1:]
		}
		if len(argv) == 0 {
			return Usagef("expected a command")
		}
		if *fanout < 1 {
			return Usagef("-f must be at least 1")
		}
		st, err := status(env, *socket, false)
		if err != nil {
			return err
		}
		var nodes []uint32
		for _, n := range st.Nodes {
			if n.State == ssiv1.NodeState_NODE_STATE_UP {
				nodes = append(nodes, n.Num)
			}
		}
		var outMu sync.Mutex
		codes := make([]int, len(nodes))
		outs := make([]*bytes.Buffer, len(nodes))
		sem := make(chan struct{}, *fanout)
		var wg sync.WaitGroup
		for i, num := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				var so, se io.Writer
				var lw1, lw2 *lineWriter
				if *gather {
					outs[i] = &bytes.Buffer{}
					so, se = outs[i], outs[i]
				} else {
					p := fmt.Sprintf("%d: ", num)
					lw1 = &lineWriter{mu: &outMu, w: env.Stdout, prefix: p}
					lw2 = &lineWriter{mu: &outMu, w: env.Stderr, prefix: p}
					so, se = lw1, lw2
				}
				sub := &Env{Ctx: env.Ctx, Stdin: strings.NewReader(""), Stdout: so, Stderr: se}
				// A command run on every node is about that node: it is pinned
				// (never migrated), which also spares it the namespace setup.
				err := runRemote(sub, *socket, execOpts{node: num, argv: argv, pin: true})
				if lw1 != nil {
					lw1.flush()
					lw2.flush()
				}
				codes[i] = exitCode(err)
				if msg := message(err); msg != "" {
					outMu.Lock()
					fmt.Fprintf(env.Stderr, "%d: ssi: %s\n", num, msg)
					outMu.Unlock()
				}
			}()
		}
		wg.Wait()
		if *gather {
			groups := map[string][]uint32{}
			var order []string
			for i, num := range nodes {
				k := outs[i].String()
				if _, ok := groups[k]; !ok {
					order = append(order, k)
				}
				groups[k] = append(groups[k], num)
			}
			sort.SliceStable(order, func(a, b int) bool { return groups[order[a]][0] < groups[order[b]][0] })
			for _, k := range order {
				fmt.Fprintf(env.Stdout, "---------------\nnodes %s (%d)\n---------------\n%s", joinNums(groups[k]), len(groups[k]), k)
			}
		}
		worst := 0
		for _, c := range codes {
			worst = max(worst, c)
		}
		if worst != 0 {
			return &ExitError{Code: worst}
		}
		return nil
	}
	Register(cmd)
}
