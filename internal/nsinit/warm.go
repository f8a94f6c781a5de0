package nsinit

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The warm-mode request: a header (jobMagic, then the length of the rest as
// a little-endian uint32), then the number of arguments and of environment
// entries (uint32 each), then every argument and every entry, each followed
// by a NUL byte. The job's stdin, stdout and stderr travel with the first
// bytes as SCM_RIGHTS.
const (
	jobMagic   = "SSIJ"
	headerSize = len(jobMagic) + 4
	// maxJobSize bounds a request: argv and environment together are
	// limited by the kernel to far less (ARG_MAX).
	maxJobSize = 16 << 20
)

// SendJob hands a job to an init waiting in warm mode on the other end of
// conn: args are the job's flags and command as Options.Args gives them
// (only -path, -dir, -root, -uid, -gid, -groups and -no-ctty may be set), env its
// environment, stdio its stdin, stdout and stderr. The init answers on conn
// with Accepted, then the status events of the job.
func SendJob(conn *net.UnixConn, args, env []string, stdio [3]*os.File) error {
	var body bytes.Buffer
	var n [8]byte
	binary.LittleEndian.PutUint32(n[:4], uint32(len(args)))
	binary.LittleEndian.PutUint32(n[4:], uint32(len(env)))
	body.Write(n[:])
	for _, list := range [][]string{args, env} {
		for _, s := range list {
			if strings.IndexByte(s, 0) >= 0 {
				return fmt.Errorf("handing the job to the init: %q: %w (NUL byte)", s, syscall.EINVAL)
			}
			body.WriteString(s)
			body.WriteByte(0)
		}
	}
	if body.Len() > maxJobSize {
		return fmt.Errorf("handing the job to the init: arguments and environment are %d bytes: %w", body.Len(), syscall.E2BIG)
	}
	msg := make([]byte, headerSize, headerSize+body.Len())
	copy(msg, jobMagic)
	binary.LittleEndian.PutUint32(msg[len(jobMagic):], uint32(body.Len()))
	msg = append(msg, body.Bytes()...)
	fds := make([]int, 3)
	for i, f := range stdio {
		fds[i] = int(f.Fd())
	}
	sent, _, err := conn.WriteMsgUnix(msg, unix.UnixRights(fds...), nil)
	if err == nil && sent < len(msg) {
		_, err = conn.Write(msg[sent:])
	}
	if err != nil {
		return fmt.Errorf("handing the job to the init: %w", err)
	}
	return nil
}

// errNoJob: the parent closed the socket without sending a job.
var errNoJob = errors.New("no job")

// recvJob reads one request from the blocking socket fd.
func recvJob(fd int) (args, env []string, stdio []*os.File, err error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	for errors.Is(err, syscall.EINTR) {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("receiving the job: %w", err)
	}
	if n == 0 {
		return nil, nil, nil, errNoJob
	}
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return nil, nil, nil, fmt.Errorf("receiving the job's descriptors: %w", perr)
		}
		for _, m := range msgs {
			fds, perr := unix.ParseUnixRights(&m)
			if perr != nil {
				continue
			}
			for _, f := range fds {
				stdio = append(stdio, os.NewFile(uintptr(f), "job-stdio"))
			}
		}
	}
	fail := func(e error) ([]string, []string, []*os.File, error) {
		for _, f := range stdio {
			f.Close()
		}
		return nil, nil, nil, e
	}
	if flags&unix.MSG_CTRUNC != 0 || len(stdio) != 3 {
		return fail(fmt.Errorf("receiving the job: want 3 stdio descriptors, got %d", len(stdio)))
	}
	sock := os.NewFile(uintptr(fd), "pool")
	rest := func(b []byte) error { _, err := io.ReadFull(sock, b); return err }
	msg := buf[:n]
	if len(msg) < headerSize {
		more := make([]byte, headerSize-len(msg))
		if err := rest(more); err != nil {
			return fail(fmt.Errorf("receiving the job: %w", err))
		}
		msg = append(msg, more...)
	}
	if string(msg[:len(jobMagic)]) != jobMagic {
		return fail(errors.New("receiving the job: not a job request (is the daemon the same version?)"))
	}
	size := int(binary.LittleEndian.Uint32(msg[len(jobMagic):headerSize]))
	if size < 8 || size > maxJobSize {
		return fail(fmt.Errorf("receiving the job: bad request size %d", size))
	}
	body := msg[headerSize:]
	if len(body) > size {
		return fail(errors.New("receiving the job: more than one request"))
	}
	if len(body) < size {
		more := make([]byte, size-len(body))
		if err := rest(more); err != nil {
			return fail(fmt.Errorf("receiving the job: %w", err))
		}
		body = append(body, more...)
	}
	nargs := int(binary.LittleEndian.Uint32(body[:4]))
	nenv := int(binary.LittleEndian.Uint32(body[4:8]))
	strs := strings.Split(string(body[8:]), "\x00")
	// Every string ends with a NUL, so the last element is empty.
	if len(strs) != nargs+nenv+1 || strs[len(strs)-1] != "" {
		return fail(errors.New("receiving the job: malformed request"))
	}
	return strs[:nargs:nargs], strs[nargs : nargs+nenv : nargs+nenv], stdio, nil
}

// waitForJob runs warm mode up to the job's start: namespace set-up, the
// ready report, then the job. ok is false when the init must exit with code.
func (in *initProc) waitForJob() (code int, ok bool) {
	fd := in.opts.PoolFD
	syscall.CloseOnExec(fd)
	in.status = os.NewFile(uintptr(fd), "pool")
	if err := in.setup(); err != nil {
		return in.fail(reasonSetup, ExitSetup, "%v", err), false
	}
	// The first process start of a Go program checks that pidfds work,
	// with a throwaway clone; FindProcess does that check too: now, rather
	// than when the job is waiting for it.
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		_ = p.Release()
	}
	in.report(Event{Kind: Ready})

	type job struct {
		args, env []string
		stdio     []*os.File
		err       error
	}
	got := make(chan job, 1)
	go func() {
		var j job
		j.args, j.env, j.stdio, j.err = recvJob(fd)
		got <- j
	}()
	var j job
wait:
	for {
		select {
		case j = <-got:
			break wait
		case sig := <-in.sigs:
			switch sig {
			case syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT:
				return 128 + int(sig.(syscall.Signal)), false
			}
		}
	}
	// Signals that came while waiting were not meant for this job.
	for drained := false; !drained; {
		select {
		case <-in.sigs:
		default:
			drained = true
		}
	}
	if errors.Is(j.err, errNoJob) {
		return 0, false
	}
	in.report(Event{Kind: Accepted})
	if j.err != nil {
		return in.fail(reasonSetup, ExitSetup, "%v", j.err), false
	}
	o, argv, err := parseArgs(j.args)
	if err == nil && (o.MountProc || o.PrivateMounts || o.Hostname != "" || o.StatusFD >= 3 || o.SyncFD >= 3 || o.PoolFD >= 3) {
		err = errors.New("a warm init takes only -path, -dir, -root, -uid, -gid, -groups and -no-ctty with its job")
	}
	if err != nil {
		for _, f := range j.stdio {
			f.Close()
		}
		return in.fail(reasonSetup, ExitSetup, "%v", err), false
	}
	in.opts.Path, in.opts.Dir, in.opts.Root, in.opts.Cred, in.opts.NoCtty = o.Path, o.Dir, o.Root, o.Cred, o.NoCtty
	in.argv, in.env, in.stdio, in.warm = argv, j.env, j.stdio, true
	return 0, true
}

// getenv looks key up in the job's environment.
func (in *initProc) getenv(key string) string {
	if !in.warm {
		return os.Getenv(key)
	}
	v := ""
	for _, kv := range in.env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val // the last one wins, as for exec
		}
	}
	return v
}
