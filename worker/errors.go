package worker

import "errors"

var (
	// ErrUnknownBuiltin is returned by Builtin for a name it does not know.
	ErrUnknownBuiltin = errors.New("unknown builtin handler")
	// ErrLeaseLost is the cause of a handler's ctx cancellation when the
	// master no longer holds its task for this worker: the connection
	// dropped or the lease could not be renewed, so the task goes (or went)
	// to another worker and this result would be discarded.
	ErrLeaseLost = errors.New("task lease lost")
)
