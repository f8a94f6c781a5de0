// Package rpcerr turns the daemon's errors into Connect errors in one
// place, so that every service reports a refusal, bad input and a failure of
// ssi itself with the same wire codes (and the CLI maps those codes to exit
// codes in one place of its own, internal/cli/errors.go).
//
// It owns only that mapping; it must not decide anything about requests.
package rpcerr

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/state"
)

// ErrNoLeader means no leader could be reached in time.
var ErrNoLeader = errors.New("no cluster leader is reachable")

// ErrOutcomeUnknown means a change was sent to a leader that did not
// answer: it may or may not have been made. Unavailable on the wire (exit
// 255), with a message that says so.
var ErrOutcomeUnknown = errors.New("the change may or may not have been made (the leader did not answer in time); check with 'cluster -V' or 'ssi clustertab' before trying again")

var stateCodes = map[state.Code]connect.Code{
	state.CodeInvalid:  connect.CodeInvalidArgument,
	state.CodeExists:   connect.CodeAlreadyExists,
	state.CodeNotFound: connect.CodeNotFound,
	state.CodeFull:     connect.CodeResourceExhausted,
	state.CodeDenied:   connect.CodePermissionDenied,
	state.CodeConflict: connect.CodeFailedPrecondition,
	state.CodeHalted:   connect.CodeUnavailable, // this node stopped applying the log: upgrade it
}

// ToConnect maps err to a Connect error; node names the answering node in
// messages of internal failures.
func ToConnect(node uint32, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		if ce == err {
			return err
		}
		return connect.NewError(ce.Code(), err) // keep the context the wrapping added
	}
	var se *state.Error
	if errors.As(err, &se) {
		code, ok := stateCodes[se.Code]
		if !ok {
			code = connect.CodeUnknown
		}
		return connect.NewError(code, err)
	}
	if errors.Is(err, ErrNoLeader) || errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("node %d: %w", node, err))
}

// Unavailable is a Connect Unavailable error.
func Unavailable(format string, a ...any) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf(format, a...))
}

// IsTransport reports whether err means the call did not reach an answer
// (connection refused or lost, peer not serving, timeout) rather than the
// peer answering with a refusal.
func IsTransport(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return true
	}
	return false
}
