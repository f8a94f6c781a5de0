package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"connectrpc.com/connect"
)

// This file is the one place where an error becomes an exit code and a
// message. Commands return wrapped errors (fmt.Errorf with %w) and never
// choose a code themselves, except a remote process's own status
// (*ExitError); report (cli.go) and onall's per-node statuses call
// exitCode and message.
//
// exitCode, first match wins:
//
//	nil, flag.ErrHelp                                  0
//	*ExitError                                         its Code: the remote process's own status
//	                                                   (128+N when killed by signal N; 126/127/255
//	                                                   when the daemon could not start it)
//	*UsageError                                        2 (ExitUsage): bad flags or input, nothing was sent
//	a transport failure anywhere in the chain          255 (ExitRemote), whatever connect code wraps it:
//	  (isTransport: *net.OpError, ECONNRESET,          a connection reset inside a connect error with
//	  ECONNREFUSED, ECONNABORTED, EPIPE, ENOTCONN,     code Canceled, Unknown or even ResourceExhausted
//	  ETIMEDOUT, EHOSTUNREACH, ENETUNREACH,            is still ssi failing, not the cluster refusing
//	  io.ErrUnexpectedEOF, net.ErrClosed, a failed
//	  dial to the socket, an HTTP/2 stream reset,
//	  connection error or closed client connection)
//	*RemoteError                                       255: ssi failed, said by the CLI itself
//	*connect.Error by code:
//	  InvalidArgument                                  2
//	  AlreadyExists, NotFound, PermissionDenied,       1 (ExitFailure): the cluster refused
//	  Unauthenticated, FailedPrecondition,
//	  ResourceExhausted, OutOfRange
//	  Unavailable, DeadlineExceeded, Internal,         255: ssi itself failed (daemon or leader
//	  Unknown, DataLoss, Canceled, Aborted,            unreachable, connection lost, no quorum, a
//	  Unimplemented (daemon and CLI disagree)          daemon and CLI of different versions)
//	context.Canceled, context.DeadlineExceeded,        255: a call that did not complete
//	os.ErrDeadlineExceeded
//	anything else: a plain local error                 1
//
// A plain local error (a file that cannot be read or written, a directory
// that cannot be created, a tool that is missing, an answer of the daemon
// that does not allow what was asked, such as "node 5 is not in the node
// table") exits 1, like a refusal: the request was understood and could not
// be carried out for a reason the user can act on. It is not 2, which
// promises that nothing was sent, and not 255, which promises that ssi's
// own machinery (daemon, connection, quorum) failed and a retry may help.

// RemoteError marks a failure of ssi itself that carries no transport error
// or connect code the mapping would recognise (a node the daemon reports
// unreachable, a stream that ended without the process's status): exit 255.
type RemoteError struct{ Err error }

func (e *RemoteError) Error() string { return e.Err.Error() }
func (e *RemoteError) Unwrap() error { return e.Err }

// exitCode is the exit status for err; see the table above.
func exitCode(err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	if isTransport(err) {
		return ExitRemote
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return ExitRemote
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return connectExit(ce.Code())
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return ExitRemote
	}
	return ExitFailure
}

// connectExit maps a connect code: the daemon's refusals are 1, malformed
// input 2, and every failure of ssi itself 255.
func connectExit(c connect.Code) int {
	switch c {
	case connect.CodeInvalidArgument:
		return ExitUsage
	case connect.CodeAlreadyExists, connect.CodeNotFound, connect.CodePermissionDenied, connect.CodeUnauthenticated,
		connect.CodeFailedPrecondition, connect.CodeResourceExhausted, connect.CodeOutOfRange:
		return ExitFailure
	default: // Unavailable, DeadlineExceeded, Internal, Unknown, DataLoss, Canceled, Aborted, Unimplemented
		return ExitRemote
	}
}

// message is what the user reads for err (without the program name), or ""
// when nothing is to be said (success, -h, a remote process's own status).
// Connect's code prefix ("unavailable: ") is dropped: the code shows in the
// exit status, and the daemon's messages are written to be read alone.
func message(err error) string {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return ""
	}
	var ee *ExitError
	if errors.As(err, &ee) && ee.Err == nil {
		return ""
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		return ue.Msg
	}
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		inner := ce.Message()
		if inner == "" {
			inner = ce.Code().String()
		}
		msg = strings.Replace(msg, ce.Error(), inner, 1)
	}
	return msg
}

// transportErrnos are the system errors of a connection that failed.
var transportErrnos = []error{
	syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE, syscall.ENOTCONN,
	syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH,
}

// isTransport reports whether err, anywhere in its chain, is a failure of
// the connection rather than an answer: the network or socket failed, the
// stream was cut or reset.
func isTransport(err error) bool {
	if err == nil {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return true
	}
	for _, e := range transportErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	// net/http's HTTP/2 errors are unexported types: only their text
	// tells them (as connect's own mapping of RST_STREAM does).
	return anyInChain(err, func(e error) bool {
		m := e.Error()
		return strings.HasPrefix(m, "stream error: ") || strings.HasPrefix(m, "connection error: ") || strings.HasPrefix(m, "http2: ")
	})
}

// isDial reports whether err is a failure to connect at all (no daemon on
// the socket): its message already names the socket and what to do.
func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// anyInChain reports whether f holds for err or any error it wraps,
// following both Unwrap() error and Unwrap() []error.
func anyInChain(err error, f func(error) bool) bool {
	for err != nil {
		if f(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if anyInChain(e, f) {
					return true
				}
			}
			return false
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		default:
			return false
		}
	}
	return false
}
