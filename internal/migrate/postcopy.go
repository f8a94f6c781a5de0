package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	criu "github.com/checkpoint-restore/go-criu/v8"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// How a post-copy move goes, against a pre-copy one (migrate.go moveOnce):
//
//  1. Before the freeze the source starts its CRIU (swrk), so that CRIU's
//     start-up is not frozen time, and registers the move's page socket
//     for the target under a random move id.
//  2. CRIU dumps the frozen job with lazy pages: the images but the memory,
//     which CRIU keeps in pipes (hence fs.pipe-max-size); they travel as
//     before, with the header's postcopy and move id.
//  3. The target starts CRIU's lazy-pages daemon on them, opens
//     PostCopy.Pages to the source, and restores the job (--lazy-pages),
//     frozen. Until the commit nothing changed: any failure ends the
//     target's copy and the page traffic, and the source thaws its job.
//  4. The commit (the location recorded) and the thaw on the target are
//     as before: the freeze ends here, whatever the job's size.
//  5. The job runs on the target and each page it touches first is asked
//     of the source; the lazy-pages daemon fetches the rest meanwhile.
//     The source ends its copy only once the daemon has every page (its
//     CRIU has served them all); the target says so (MigrateReceipt).
//
// After the commit the job's memory is in two places: if the source, or
// the path to it, is lost before the last page arrived, the job on the
// target cannot go on. The target then kills it — before the lazy-pages
// daemon lets go of the job's memory, which would otherwise give the job
// pages of zeros — and says why in its log; ssi wait reports SIGKILL.

// postCopyMove is the source's side of one post-copy move.
type postCopyMove struct {
	m         *Migrator
	id        string
	to        uint32
	dump      *lazyDump
	src       *pageSource
	size      int64
	committed atomic.Bool
	cancel    context.CancelFunc // the stream to the target
	stop      func() bool
	once      sync.Once
}

// preparePostCopy decides how job rj moves to node to and, for a post-copy
// move, starts its CRIU; nil for a pre-copy move (fallback says why a move
// the size made post-copy is not). A --net job (hasNet) moves pre-copy.
func (m *Migrator) preparePostCopy(ctx context.Context, rj *rexec.Job, to *state.Node, criuPath, dir string, hasNet bool) (*postCopyMove, string, error) {
	if hasNet {
		// Post-copy of a job with its own network (its TCP connections
		// locked and repaired by CRIU) is not done, nor tested.
		if copyPrefFrom(ctx) == copyPost {
			return nil, "", connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w: a job with its own network (--net) moves pre-copy only in this version", m.cfg.Self, errPostCopy))
		}
		return nil, "", nil
	}
	paths := rj.CgroupPaths()
	rss, err := residentBytes(paths[0])
	if err != nil {
		rss = 0 // decided by the caller's preference alone
	}
	dec, err := decideCopy(copyPrefFrom(ctx), rss, m.postCopyAbove(), m.pipeMaxSize)
	if err != nil {
		return nil, "", connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", m.cfg.Self, err))
	}
	if !dec.post {
		if dec.fallback != "" {
			m.log.Warn("moving a large job without post-copy", "size", rss, "why", dec.fallback)
		}
		return nil, dec.fallback, nil
	}
	ld, err := prepareLazyDump(criuPath, dir)
	if err != nil {
		return nil, "", m.fail(err)
	}
	pc := &postCopyMove{m: m, id: newMoveID(), to: to.Num, dump: ld, size: rss,
		src: &pageSource{to: to.Num, sock: ld.relay, ended: make(chan error, 1)}}
	m.pages.add(pc.id, pc.src)
	return pc, "", nil
}

// lazy is the dump's CRIU (nil for a pre-copy move).
func (pc *postCopyMove) lazy() *lazyDump {
	if pc == nil {
		return nil
	}
	return pc.dump
}

// header marks the header of a post-copy move.
func (pc *postCopyMove) header(h *ssiv1.MigrateHeader) {
	if pc != nil {
		h.Postcopy, h.MoveId = true, pc.id
	}
}

// streamContext is the context of the stream to the target: the caller's
// until the commit; after it the move goes on whatever the caller does
// (the job on the target needs its pages).
func (pc *postCopyMove) streamContext(ctx context.Context) context.Context {
	if pc == nil {
		return ctx
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pc.cancel = cancel
	pc.stop = context.AfterFunc(ctx, func() {
		if !pc.committed.Load() {
			cancel()
		}
	})
	return sctx
}

// commit is called at the commit point.
func (pc *postCopyMove) commit() {
	if pc != nil {
		pc.committed.Store(true)
	}
}

// close ends the move's CRIU and page traffic (if they still run).
func (pc *postCopyMove) close() {
	if pc == nil {
		return
	}
	pc.once.Do(func() {
		pc.m.pages.remove(pc.id)
		pc.dump.close()
		if pc.stop != nil {
			pc.stop()
		}
		if pc.cancel != nil {
			pc.cancel()
		}
	})
}

// pagesTimeout bounds the wait for a post-copy's pages (the page stream's
// silence detection ends it sooner when a node is lost): a minute, plus a
// second per 10 MB.
func (pc *postCopyMove) pagesTimeout() time.Duration {
	return time.Minute + time.Duration(pc.size/10e6)*time.Second
}

// finish, once the job runs on the target: wait until the target has every
// page and the source's CRIU has ended. An error means the job on the
// target could not get its memory (the target kills it).
func (pc *postCopyMove) finish(st interface {
	Receive() (*ssiv1.MigrateReceipt, error)
}, ph *ssiv1.MigratePhases) error {
	ph.Postcopy = true
	derr := pc.dump.wait(pc.pagesTimeout())
	if derr != nil {
		pc.cancel() // the target's receipt may never come
	}
	r, err := st.Receive()
	switch {
	case err == nil && !r.PagesDone:
		return errors.Join(derr, fmt.Errorf("the target did not get every page: %s", r.PagesError))
	case err != nil && (derr != nil || !pc.src.cleanEnd(5*time.Second)):
		return errors.Join(derr, fmt.Errorf("waiting for the target's last page: %w", err))
	case err != nil:
		// CRIU served pages until the lazy-pages daemon ended, and the
		// target closed the page stream cleanly: only the receipt was
		// lost (the stream of the move broke).
		pc.m.log.Warn("the target did not confirm its last page; this node's CRIU had served them all", "to", pc.to, "err", err)
		return nil
	}
	ph.PagesUs = r.PagesUs
	if derr != nil {
		// Every page arrived, but CRIU ended badly (its tasks, say).
		pc.m.log.Warn("the post-copy dump ended with an error after the target had every page", "err", derr)
	}
	return nil
}

// postCopyTarget is the target's side of one post-copy move: the
// lazy-pages daemon and its page stream.
type postCopyTarget struct {
	m       *Migrator
	cpid    vproc.CPID
	from    uint32
	lp      *lazyPages
	relay   chan error // the page stream's end, once (kept for the next reader)
	armed   atomic.Bool
	mu      sync.Mutex
	job     *procs.Job // restored; killed if its pages cannot all come
	started time.Time  // the thaw
	ok      bool       // every page arrived
	lostErr error
}

// startPostCopy starts the lazy-pages daemon on the images in dir and its
// page stream to the source, before the restore.
func (m *Migrator) startPostCopy(ctx context.Context, criuPath string, h *ssiv1.MigrateHeader, dir string) (*postCopyTarget, error) {
	if h.MoveId == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("a post-copy move of process %d without a move id", h.Cpid))
	}
	if n, err := m.pipeMaxSize(); err != nil || n < PostCopyPipeSize {
		if err == nil {
			err = fmt.Errorf("fs.pipe-max-size is %d and post-copy needs %d: sysctl -w fs.pipe-max-size=%d", n, PostCopyPipeSize, PostCopyPipeSize)
		}
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w: %w", m.cfg.Self, errPostCopy, err))
	}
	lp, err := startLazyPages(criuPath, dir)
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", m.cfg.Self, err))
	}
	t := &postCopyTarget{m: m, cpid: vproc.CPID(h.Cpid), from: h.From, lp: lp}
	t.relay, err = m.openPages(ctx, h.From, h.MoveId, lp.relay, t.lost, &t.armed)
	if err != nil {
		lp.stop()
		return nil, m.fail(err)
	}
	return t, nil
}

// ready is the restore's wait for the lazy-pages daemon (nil: not
// post-copy).
func (t *postCopyTarget) ready() func() error {
	if t == nil {
		return nil
	}
	return t.lp.waitReady
}

// restoredJob gives the target the restored job (frozen still).
func (t *postCopyTarget) restoredJob(pj *procs.Job) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.job = pj
	lost := t.lostErr
	t.mu.Unlock()
	if lost != nil {
		t.kill(pj, lost)
	}
}

// lost: the page stream broke before the daemon had every page.
func (t *postCopyTarget) lost(err error) {
	select {
	case e := <-t.lp.exit:
		t.lp.exit <- e
		if e == nil {
			return // the daemon has every page: the stream may end as it likes
		}
	default:
	}
	t.mu.Lock()
	if t.ok || t.lostErr != nil {
		t.mu.Unlock()
		return
	}
	t.lostErr = err
	pj := t.job
	t.mu.Unlock()
	if pj != nil {
		t.kill(pj, err)
	}
}

// kill ends a job whose memory cannot all arrive, and says why in its log.
func (t *postCopyTarget) kill(pj *procs.Job, why error) {
	msg := fmt.Sprintf("node %d: process %d was killed: its memory pages were still coming from node %d (post-copy migration) when %v; it cannot go on without them", t.m.cfg.Self, t.cpid, t.from, why)
	if err := pj.Process().Discard(); err != nil {
		t.m.log.Error("killing a post-copy job whose pages cannot arrive", "cpid", t.cpid, "err", err)
	}
	t.m.log.Error(msg)
	if pj.LogPath != "" {
		if f, err := os.OpenFile(pj.LogPath, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			fmt.Fprintln(f, "ssi: "+msg)
			f.Close()
		}
	}
}

// settled: the source went silent before the commit, and settle decided
// from the replicated location. A job that is here (the commit was
// recorded) still needs its pages: wait for them (it is killed if they
// cannot come); one that is not was ended.
func (t *postCopyTarget) settled(m *Migrator, pj *procs.Job, h *ssiv1.MigrateHeader) {
	if t == nil {
		return
	}
	if locate(m.cfg.FSM.Cluster(), vproc.CPID(h.Cpid)) != m.cfg.Self {
		return
	}
	t.thawed()
	if err := t.wait(); err != nil {
		m.log.Error("a post-copy job whose source went silent did not get every page", "cpid", h.Cpid, "err", err)
	}
}

// thawed marks the thaw: silence on the page stream counts from now.
func (t *postCopyTarget) thawed() {
	if t == nil {
		return
	}
	t.started = time.Now()
	t.armed.Store(true)
}

// wait waits until the lazy-pages daemon has every page (nil) or cannot
// (the job is killed).
func (t *postCopyTarget) wait() error {
	err := t.lp.result()
	if err == nil {
		t.mu.Lock()
		if t.lostErr == nil {
			t.ok = true
		}
		err = t.lostErr
		t.mu.Unlock()
	} else if why, ok := t.endedByItself(); ok {
		// The job ended (a signal, its own exit) while its pages were
		// still coming, and the daemon then lost the process it served:
		// the move is complete, and the job's end is its own.
		t.m.log.Info("a post-copy job ended before all its pages came; its end stands", "cpid", t.cpid, "how", why, "daemon", err)
		t.mu.Lock()
		t.ok = true
		t.mu.Unlock()
		err = nil
	} else {
		err = fmt.Errorf("CRIU's lazy-pages daemon failed: %w%s", err, logTail(t.lp.log))
		t.lost(err)
	}
	rerr := peek(t.relay)
	if err == nil && rerr != nil {
		t.m.log.Warn("the page stream ended with an error after the last page", "cpid", t.cpid, "err", rerr)
	}
	return err
}

// endedByItself says whether the restored job has ended, other than by a
// fault (SIGSEGV, SIGBUS: what a page that cannot come would cause),
// within a moment of the lazy-pages daemon's failure (the daemon fails
// when the process it serves is gone, before this node has reaped it).
func (t *postCopyTarget) endedByItself() (string, bool) {
	t.mu.Lock()
	pj := t.job
	t.mu.Unlock()
	if pj == nil {
		return "", false
	}
	select {
	case <-pj.Done():
	case <-time.After(2 * time.Second):
		return "", false
	}
	st, _ := pj.Status()
	if st.Signal == syscall.SIGSEGV || st.Signal == syscall.SIGBUS {
		return "", false
	}
	return st.String(), true
}

// finish is wait, told to the source.
func (t *postCopyTarget) finish(st interface {
	Send(*ssiv1.MigrateReceipt) error
}) error {
	err := t.wait()
	r := &ssiv1.MigrateReceipt{PagesDone: err == nil, PagesUs: time.Since(t.started).Microseconds()}
	if err != nil {
		r.PagesError = err.Error()
	}
	return st.Send(r)
}

// close ends the daemon and the page stream: a job restored here that did
// not get every page is killed first.
func (t *postCopyTarget) close() {
	if t == nil {
		return
	}
	t.lost(errors.New("the move ended"))
	t.lp.stop()
	peek(t.relay)
}

// peek is the value a channel of one result holds, left there.
func peek(ch chan error) error {
	err := <-ch
	ch <- err
	return err
}

// startCRIU starts the swrk CRIU of a pre-copy dump before the freeze, so
// that its start-up is not frozen time (a post-copy move has its own: nil).
// On failure it returns nil: dump starts one then, and says what fails.
func startCRIU(criuPath string, pc *postCopyMove) *criu.Criu {
	if pc != nil {
		return nil
	}
	c := criu.MakeCriu()
	c.SetCriuPath(criuPath)
	if err := c.Prepare(); err != nil {
		return nil
	}
	return c
}

// endCRIU ends a CRIU startCRIU started, if dump did not use it.
func endCRIU(c *criu.Criu) {
	if c != nil {
		_ = c.Cleanup()
	}
}
