package migrate

// Post-copy migration (docs/MIGRATION.md, "Post-copy"): the source dumps
// the job with CRIU's lazy pages, so that its memory stays where it is and
// only the rest of the images travels before the restore; the target
// restores it with --lazy-pages and runs CRIU's lazy-pages daemon, which
// fetches every page from the source's CRIU page server while the job runs
// again. Both CRIU processes talk to their own daemon over a unix socket
// pair (CRIU's --ps-socket), and the daemons relay the bytes through
// PostCopy.Pages over the cluster's mTLS transport (pagerelay.go): no CRIU
// process listens on any network.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// DefaultPostCopyAbove is the job size (resident memory) from which a move
// is post-copy unless asked otherwise (the daemon's --postcopy-above): below
// it, copying the memory while frozen costs less than starting CRIU's
// lazy-pages daemon and fetching pages afterwards (docs/PERFORMANCE.md).
const DefaultPostCopyAbove = 64 << 20

// copyPref is what the caller asked of a move's copy.
type copyPref int

const (
	copyAuto copyPref = iota // the size decides (Config.PostCopyAbove)
	copyPost                 // post-copy, or refuse
	copyPre                  // never post-copy
)

type copyPrefKey struct{}

// withCopyPref carries the caller's preference to moveOnce (expel and the
// leveler move with copyAuto).
func withCopyPref(ctx context.Context, p copyPref) context.Context {
	return context.WithValue(ctx, copyPrefKey{}, p)
}

// copyPrefOf is what a migrate request asks for.
func copyPrefOf(q *ssiv1.MigrateRequest) (copyPref, error) {
	switch {
	case q.Postcopy && q.Precopy:
		return copyAuto, connect.NewError(connect.CodeInvalidArgument, errors.New("a move is post-copy or pre-copy, not both"))
	case q.Postcopy:
		return copyPost, nil
	case q.Precopy:
		return copyPre, nil
	}
	return copyAuto, nil
}

func copyPrefFrom(ctx context.Context) copyPref {
	p, _ := ctx.Value(copyPrefKey{}).(copyPref)
	return p
}

// errPostCopy is a post-copy move that cannot be made on this node.
var errPostCopy = errors.New("post-copy migration is not possible")

// copyDecision is how a job moves: post-copy or not, and if a move that
// would have been post-copy is not, why.
type copyDecision struct {
	post     bool
	fallback string
}

// decideCopy chooses the copy of a job of rss bytes: pref, else the size
// against above (0: never automatically). A post-copy move needs
// fs.pipe-max-size >= PostCopyPipeSize (pipeMax): when asked for, its lack
// is an error wrapping errPostCopy; when chosen by size, the move falls back
// to a pre-copy one and says why.
func decideCopy(pref copyPref, rss, above int64, pipeMax func() (int, error)) (copyDecision, error) {
	switch {
	case pref == copyPre:
		return copyDecision{}, nil
	case pref == copyAuto && (above <= 0 || rss < above):
		return copyDecision{}, nil
	}
	why := ""
	if n, err := pipeMax(); err != nil {
		why = err.Error()
	} else if n < PostCopyPipeSize {
		why = fmt.Sprintf("fs.pipe-max-size is %d and post-copy needs %d (CRIU keeps the pages in pipes and may not enlarge them): sysctl -w fs.pipe-max-size=%d", n, PostCopyPipeSize, PostCopyPipeSize)
	}
	switch {
	case why == "":
		return copyDecision{post: true}, nil
	case pref == copyPost:
		return copyDecision{}, fmt.Errorf("%w: %s", errPostCopy, why)
	}
	return copyDecision{fallback: why}, nil
}

// pipeMaxSize is the node's fs.pipe-max-size (Config.PipeMaxSize, a seam
// for tests; SSI_TEST_PIPE_MAX_SIZE overrides what the kernel says, for the
// e2e tests, which must not lower the machine's setting).
func (m *Migrator) pipeMaxSize() (int, error) {
	if m.cfg.PipeMaxSize != nil {
		return m.cfg.PipeMaxSize()
	}
	if v := os.Getenv("SSI_TEST_PIPE_MAX_SIZE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("SSI_TEST_PIPE_MAX_SIZE=%q: %w", v, err)
		}
		return n, nil
	}
	return PipeMaxSize()
}

// postCopyAbove is the size from which moves are post-copy (0: never
// automatically).
func (m *Migrator) postCopyAbove() int64 {
	if m.cfg.PostCopyAbove < 0 {
		return 0
	}
	if m.cfg.PostCopyAbove == 0 {
		return DefaultPostCopyAbove
	}
	return m.cfg.PostCopyAbove
}

// residentBytes is the resident memory of the processes of the cgroup at
// dir (shared pages counted once per process: an upper bound).
func residentBytes(dir string) (int64, error) {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return 0, fmt.Errorf("the job's processes: %w", err)
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		b, err := os.ReadFile("/proc/" + strings.TrimSpace(sc.Text()) + "/statm")
		if err != nil {
			continue // it ended meanwhile
		}
		if f := strings.Fields(string(b)); len(f) > 1 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				total += n * int64(os.Getpagesize())
			}
		}
	}
	return total, sc.Err()
}

// newMoveID is a post-copy move's name on the Pages stream.
func newMoveID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// socketPair is a connected pair of unix stream sockets (close-on-exec):
// mine, non-blocking, for the daemon (Go's poller, so that closing it ends
// a read), and CRIU's, blocking, as CRIU expects.
func socketPair(name string) (mine, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the %s sockets: %w", name, err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("creating the %s sockets: %w", name, err)
	}
	return os.NewFile(uintptr(fds[0]), name), os.NewFile(uintptr(fds[1]), name), nil
}

// psKey is the name under which the page-server socket is handed to CRIU's
// swrk process (go-criu passes extra descriptors as inherit-fd entries,
// which a dump does not use); psFD is its descriptor there, the first one
// after the standard three (go-criu's only extra file).
const (
	psKey = "ssi-page-server"
	psFD  = 3
)

// lazyDump is the source's CRIU of a post-copy move: started before the
// freeze (its start-up is off the frozen path), it dumps the job with lazy
// pages, says when the images are written, and then serves the pages on
// its socket until the target's lazy-pages daemon has them all.
type lazyDump struct {
	c     *criu.Criu
	relay *os.File // the daemon's end of CRIU's page-server socket
	conf  string   // the CRIU configuration naming the socket
	ready chan struct{}
	done  chan error // the dump's result, once
	ran   bool
}

// prepareLazyDump starts the swrk CRIU of a post-copy dump into dir.
func prepareLazyDump(criuPath, dir string) (*lazyDump, error) {
	mine, theirs, err := socketPair("page-server")
	if err != nil {
		return nil, err
	}
	// The RPC has no field for the page-server socket of a lazy dump
	// (criu/cr-service.c reads CriuPageServerInfo.fd only without
	// lazy_pages), but its configuration file takes every command-line
	// option, --ps-socket included.
	conf := filepath.Join(dir, "..", filepath.Base(dir)+".criu.conf")
	if err := os.WriteFile(conf, []byte("ps-socket "+strconv.Itoa(psFD)+"\n"), 0o600); err != nil {
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("writing CRIU's configuration: %w", err)
	}
	c := criu.MakeCriu()
	c.SetCriuPath(criuPath)
	c.AddInheritFd(psKey, theirs)
	err = c.Prepare()
	theirs.Close() // CRIU has its own
	if err != nil {
		mine.Close()
		os.Remove(conf)
		return nil, fmt.Errorf("starting CRIU: %w", err)
	}
	return &lazyDump{c: c, relay: mine, conf: conf, ready: make(chan struct{}), done: make(chan error, 1)}, nil
}

// postDump learns from CRIU's post-dump notice that the images are
// written: CRIU serves the pages only after it.
type postDump struct {
	criu.NoNotify
	ready chan struct{}
}

func (n *postDump) PostDump() error { close(n.ready); return nil }

// dump runs the lazy dump with opts (dump's, the job frozen already) and
// returns once the images are in dir: the pages stay with CRIU, which
// serves them until wait returns. The caller's img stays open until then.
func (d *lazyDump) dump(opts *rpc.CriuOpts, dir string) error {
	opts.LazyPages = ptr(true)
	opts.ConfigFile = ptr(d.conf)
	img, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	opts.ImagesDirFd = ptr(int32(img.Fd()))
	d.ran = true
	go func() {
		defer img.Close()
		err := d.c.Dump(opts, &postDump{ready: d.ready})
		if err != nil {
			err = fmt.Errorf("checkpoint with CRIU (lazy pages): %w%s", err, logTail(filepath.Join(dir, "dump.log")))
		}
		d.done <- err
	}()
	select {
	case <-d.ready:
		return nil
	case err := <-d.done:
		d.done <- err
		if err == nil {
			err = errors.New("checkpoint with CRIU (lazy pages): it ended before writing the images")
		}
		return err
	}
}

// wait waits for the end of the dump: every page served (nil), or the
// page traffic broken. After timeout it closes the socket, which ends it.
func (d *lazyDump) wait(timeout time.Duration) error {
	if !d.ran {
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-t.C:
		d.relay.Close()
		return errors.Join(fmt.Errorf("the page traffic did not end in %v", timeout), peek(d.done))
	}
}

// close ends the dump whatever its state (breaking the page traffic if it
// still runs) and releases CRIU.
func (d *lazyDump) close() {
	d.relay.Close()
	if d.ran {
		peek(d.done)
	}
	// An unused CRIU ends when its socket closes; a used one has ended:
	// the dump's result said what failed.
	_ = d.c.Cleanup()
	os.Remove(d.conf)
}

// lazyStartTimeout bounds the start of the target's lazy-pages daemon.
const lazyStartTimeout = 20 * time.Second

// lazyPages is the target's CRIU lazy-pages daemon of one post-copy move.
type lazyPages struct {
	cmd   *exec.Cmd
	relay *os.File // the daemon's end of its page-server socket
	exit  chan error
	ready chan error // its status: nil once it listens for the restore
	log   string
}

// startLazyPages starts CRIU's lazy-pages daemon on the images in dir;
// waitReady waits until it is ready for the restore.
func startLazyPages(criuPath, dir string) (*lazyPages, error) {
	mine, theirs, err := socketPair("lazy-pages")
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	sr, sw, err := os.Pipe()
	if err != nil {
		mine.Close()
		return nil, err
	}
	lp := &lazyPages{relay: mine, exit: make(chan error, 1), ready: make(chan error, 1), log: filepath.Join(dir, "lazy-pages.log")}
	// Warnings and errors only: at debug level CRIU logs every page
	// request, which costs the job time on every fault.
	lp.cmd = exec.Command(criuPath, "lazy-pages", "--page-server", "--ps-socket", "3", "--status-fd", "4",
		"-D", dir, "-o", "lazy-pages.log", "-v2")
	lp.cmd.ExtraFiles = []*os.File{theirs, sw}
	if err := lp.cmd.Start(); err != nil {
		sw.Close()
		sr.Close()
		mine.Close()
		return nil, fmt.Errorf("starting CRIU's lazy-pages daemon: %w", err)
	}
	sw.Close()
	go func() { lp.exit <- lp.cmd.Wait() }()
	go func() {
		defer sr.Close()
		var b [1]byte
		_, err := sr.Read(b[:])
		lp.ready <- err
	}()
	return lp, nil
}

// waitReady waits until the daemon listens for the restore.
func (lp *lazyPages) waitReady() error {
	t := time.NewTimer(lazyStartTimeout)
	defer t.Stop()
	select {
	case err := <-lp.ready:
		lp.ready <- err
		if err == nil {
			return nil
		}
		lp.stop()
		return fmt.Errorf("CRIU's lazy-pages daemon did not start: %w%s", lp.result(), logTail(lp.log))
	case <-t.C:
		lp.stop()
		return fmt.Errorf("CRIU's lazy-pages daemon was not ready in %v%s", lazyStartTimeout, logTail(lp.log))
	}
}

// result is the daemon's exit (it has exited).
func (lp *lazyPages) result() error { return peek(lp.exit) }

// stop kills the daemon (if it still runs) and waits for it.
func (lp *lazyPages) stop() {
	_ = lp.cmd.Process.Kill()
	lp.relay.Close()
	_ = lp.result()
}

// SoftDirty reports whether this kernel tracks dirty memory (soft-dirty
// bits), which pre-copy migration (iterative dumps while the job runs)
// needs: criu check --feature mem_dirty_track. Post-copy does not need it.
func SoftDirty(ctx context.Context, criuPath string) (bool, error) {
	out, err := run(ctx, checkTimeout, criuPath, "check", "--feature", "mem_dirty_track")
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee):
		return false, nil
	}
	return false, fmt.Errorf("criu check --feature mem_dirty_track: %w%s", err, detail(out))
}

// UserFaultFD reports whether CRIU can restore with lazy pages here
// (criu check --feature uffd-noncoop), which post-copy needs.
func UserFaultFD(ctx context.Context, criuPath string) error {
	out, err := run(ctx, checkTimeout, criuPath, "check", "--feature", "uffd-noncoop")
	if err != nil {
		return fmt.Errorf("criu check --feature uffd-noncoop: %w%s", err, detail(out))
	}
	return nil
}
