package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"connectrpc.com/connect"
)

// h2StreamError stands for net/http's unexported HTTP/2 stream error.
type h2StreamError struct{}

func (h2StreamError) Error() string {
	return "stream error: stream ID 3; INTERNAL_ERROR; received from peer"
}

func TestExitCodeTable(t *testing.T) {
	reset := fmt.Errorf("read unix @->/run/ssi/ssi.sock: %w", syscall.ECONNRESET)
	dial := fmt.Errorf("no ssi daemon is listening on /x.sock (is it running? set --socket or SSI_SOCKET): %w",
		&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
	ce := func(c connect.Code, err error) error { return connect.NewError(c, err) }
	plain := errors.New("the daemon's words")
	for _, tc := range []struct {
		name string
		err  error
		code int
	}{
		{"nil", nil, 0},
		{"help", flag.ErrHelp, 0},
		{"remote process status", &ExitError{Code: 7}, 7},
		{"remote process killed by signal", fmt.Errorf("x: %w", &ExitError{Code: 130}), 130},
		{"usage", Usagef("bad flag"), 2},
		{"wrapped usage", fmt.Errorf("ctx: %w", Usagef("bad")), 2},

		{"InvalidArgument", ce(connect.CodeInvalidArgument, plain), 2},
		{"AlreadyExists", ce(connect.CodeAlreadyExists, plain), 1},
		{"NotFound", ce(connect.CodeNotFound, plain), 1},
		{"PermissionDenied", ce(connect.CodePermissionDenied, plain), 1},
		{"Unauthenticated", ce(connect.CodeUnauthenticated, plain), 1},
		{"FailedPrecondition", ce(connect.CodeFailedPrecondition, plain), 1},
		{"ResourceExhausted", ce(connect.CodeResourceExhausted, plain), 1},
		{"OutOfRange", ce(connect.CodeOutOfRange, plain), 1},
		{"Unavailable", ce(connect.CodeUnavailable, plain), 255},
		{"DeadlineExceeded", ce(connect.CodeDeadlineExceeded, plain), 255},
		{"Internal", ce(connect.CodeInternal, plain), 255},
		{"Unknown", ce(connect.CodeUnknown, plain), 255},
		{"DataLoss", ce(connect.CodeDataLoss, plain), 255},
		{"Canceled", ce(connect.CodeCanceled, plain), 255},
		{"Aborted", ce(connect.CodeAborted, plain), 255},
		{"Unimplemented", ce(connect.CodeUnimplemented, plain), 255},
		{"wrapped connect refusal", fmt.Errorf("issue a token for node 3: %w", ce(connect.CodeNotFound, plain)), 1},

		// Transport failures are 255 whatever connect code carries them.
		{"connection reset inside Unknown", ce(connect.CodeUnknown, reset), 255},
		{"connection reset inside Canceled (connect's mapping of ECONNRESET)", ce(connect.CodeCanceled, reset), 255},
		{"stream reset inside ResourceExhausted", ce(connect.CodeResourceExhausted, fmt.Errorf("bandwidth exhausted: %w", h2StreamError{})), 255},
		{"connection reset inside a refusal code", fmt.Errorf("lost: %w", ce(connect.CodeFailedPrecondition, reset)), 255},
		{"plain connection reset", reset, 255},
		{"plain connection refused", syscall.ECONNREFUSED, 255},
		{"broken pipe", fmt.Errorf("write: %w", syscall.EPIPE), 255},
		{"net.OpError", &net.OpError{Op: "read", Net: "unix", Err: errors.New("boom")}, 255},
		{"dial failure to the socket", dial, 255},
		{"unexpected EOF", fmt.Errorf("protocol error: incomplete envelope: %w", io.ErrUnexpectedEOF), 255},
		{"HTTP/2 stream reset", fmt.Errorf("x: %w", h2StreamError{}), 255},
		{"HTTP/2 connection lost", errors.New("http2: client connection lost"), 255},
		{"transport failure in a joined error", errors.Join(errors.New("local"), reset), 255},
		{"context deadline", fmt.Errorf("join: %w", context.DeadlineExceeded), 255},
		{"context canceled", context.Canceled, 255},
		{"RemoteError", &RemoteError{Err: errors.New("node 3 (demo3): unreachable")}, 255},

		// Plain local errors are 1.
		{"local file error", fmt.Errorf("read nodes.txt: %w", &os.PathError{Op: "open", Path: "nodes.txt", Err: syscall.ENOENT}), 1},
		{"local check", errors.New("no node is UP"), 1},
	} {
		if got := exitCode(tc.err); got != tc.code {
			t.Errorf("%s: exitCode(%v) = %d, want %d", tc.name, tc.err, got, tc.code)
		}
	}
}

func TestMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{flag.ErrHelp, ""},
		{&ExitError{Code: 3}, ""},
		{&ExitError{Code: 127, Err: errors.New("node 2 (demo2): no such command")}, "node 2 (demo2): no such command"},
		{Usagef("expected a node number"), "expected a node number"},
		{connect.NewError(connect.CodeNotFound, errors.New("node 5 is not in the node table")), "node 5 is not in the node table"},
		{fmt.Errorf("lost the connection to the ssi daemon at /s: %w", connect.NewError(connect.CodeUnknown, fmt.Errorf("read: %w", syscall.ECONNRESET))),
			"lost the connection to the ssi daemon at /s: read: connection reset by peer"},
		{connect.NewError(connect.CodeUnavailable, nil), "unavailable"},
		{errors.New("plain"), "plain"},
	} {
		if got := message(tc.err); got != tc.want {
			t.Errorf("message(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// A unary call that loses its connection names the daemon and the call; a
// dial failure keeps its own message; answers are left alone.
func TestLostDaemon(t *testing.T) {
	reset := connect.NewError(connect.CodeUnavailable, fmt.Errorf("read: %w", syscall.ECONNRESET))
	err := lostDaemon("/d/node1/ssi.sock", "Wait", reset)
	if got := message(err); !strings.Contains(got, "lost the connection to the ssi daemon at /d/node1/ssi.sock during Wait") ||
		!strings.HasSuffix(got, "read: connection reset by peer") {
		t.Errorf("lost connection: %q", got)
	}
	if exitCode(err) != ExitRemote {
		t.Errorf("lost connection: exit %d", exitCode(err))
	}
	dial := connect.NewError(connect.CodeUnavailable, fmt.Errorf("no ssi daemon is listening on /x: %w", &net.OpError{Op: "dial", Err: syscall.ENOENT}))
	if got := lostDaemon("/x", "Status", dial); got != dial {
		t.Errorf("dial failure rewrapped: %v", got)
	}
	refusal := connect.NewError(connect.CodeNotFound, errors.New("no process 3000001"))
	if got := lostDaemon("/x", "Signal", refusal); got != refusal {
		t.Errorf("refusal rewrapped: %v", got)
	}
}

// report prints the message once with the right synopsis, and returns the
// code exitCode gives.
func TestReport(t *testing.T) {
	cmd := &Command{Name: "x", Usage: "ssi x N"}
	for _, tc := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, 0, ""},
		{flag.ErrHelp, 0, ""},
		{Usagef("expected N"), 2, "ssi x: expected N\nusage: ssi x N\n"},
		{&UsageError{Msg: "bad --size", Usage: "ssi x sub --size S"}, 2, "ssi x: bad --size\nusage: ssi x sub --size S\n"},
		{&ExitError{Code: 42}, 42, ""},
		{connect.NewError(connect.CodeUnknown, fmt.Errorf("read: %w", syscall.ECONNRESET)), 255, "ssi x: read: connection reset by peer\n"},
		{connect.NewError(connect.CodeAlreadyExists, errors.New("MAC address taken")), 1, "ssi x: MAC address taken\n"},
	} {
		var errb bytes.Buffer
		env := &Env{Stderr: &errb, Prog: "ssi x"}
		if code := report(env, cmd, tc.err); code != tc.code || errb.String() != tc.stderr {
			t.Errorf("report(%v) = %d %q, want %d %q", tc.err, code, errb.String(), tc.code, tc.stderr)
		}
	}
}

// Subcommands' usage errors show the subcommand's synopsis.
func TestSubcommandUsage(t *testing.T) {
	var out, errb bytes.Buffer
	env := &Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
	if code := Run(env, []string{"ssi", "dhcp", "set", "--enable", "--disable"}); code != ExitUsage ||
		!strings.Contains(errb.String(), "contradict") || !strings.Contains(errb.String(), "usage: ssi dhcp set [") {
		t.Errorf("dhcp set usage error: %d %q", code, errb.String())
	}
}

// A CLI pointed at a socket where no daemon listens exits 255 and says so.
func TestNoDaemonExits255(t *testing.T) {
	dir := t.TempDir()
	stale := dir + "/stale.sock"
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens: connection refused
	for _, sock := range []string{dir + "/none.sock", stale} {
		for _, args := range [][]string{
			{"cluster", "-V"}, {"onnode", "2", "true"}, {"ssi", "wait", "2000001"}, {"ssi", "kill", "2000001"},
			{"ssi", "logs", "2000001"}, {"ssi", "rmnode", "5"}, {"onall", "true"}, {"where_pid", "2000001"},
		} {
			var out, errb bytes.Buffer
			env := &Env{Ctx: context.Background(), Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
			n := 1 // flags go before the positional arguments
			if args[0] == "ssi" {
				n = 2
			}
			argv := append(append(append([]string{}, args[:n]...), "--socket", sock), args[n:]...)
			if code := Run(env, argv); code != ExitRemote || !strings.Contains(errb.String(), "no ssi daemon is listening on "+sock) {
				t.Errorf("%v: exit %d, stderr %q; want 255 and 'no ssi daemon is listening'", argv, code, errb.String())
			}
		}
	}
}
