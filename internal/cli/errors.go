package cli

import (
	"errors"

	"connectrpc.com/connect"
)

// classify maps an error to an exit code and a message. Errors from the
// daemon arrive as connect errors; their code says whose fault it was.
func classify(err error) (int, string) {
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeInvalidArgument:
			return ExitUsage, ce.Message()
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
			return ExitRemote, ce.Message()
		default:
			return ExitFailure, ce.Message()
		}
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return ExitRemote, re.Error()
	}
	return ExitFailure, err.Error()
}

// RemoteError marks a failure of ssi itself (daemon unreachable, connection
// lost): exit 255.
type RemoteError struct{ Err error }

func (e *RemoteError) Error() string { return e.Err.Error() }
func (e *RemoteError) Unwrap() error { return e.Err }
