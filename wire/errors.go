package wire

import (
	"errors"
	"fmt"

	"github.com/qm-dev/qm/internal/bytesize"
)

// Code identifies an error both sides of the wire recognise, so that
// errors.Is works on errors returned by a remote call.
type Code uint16

// Error codes sent by the master. Zero means success.
const (
	CodeOK Code = iota
	CodeInternal
	CodeBadRequest
	CodeUnknownQueue
	CodeQueueFull
	CodeNotLeased
	CodeShuttingDown
	CodeTooLarge
	CodeUnknownOp
	CodeNoSuchTask
	CodeMasterFull
	CodeTooManyStreams
	CodeDiskFull
	CodePermissionDenied
	CodeUnavailable
)

var (
	// ErrInternal is returned when the master failed for a reason of its own.
	ErrInternal = errors.New("internal error")
	// ErrBadRequest is returned when a request is malformed or misses a field.
	ErrBadRequest = errors.New("bad request")
	// ErrBadResponse is returned by a call whose response could not be
	// read: the master's fault, or the data it stored, not the call's, so
	// a client that retries on a new connection (a worker) does, where
	// ErrBadRequest would stop it. (A task put by an older master may nest
	// deeper than a get can hand out, MaxPayloadDepth.)
	ErrBadResponse = errors.New("bad response from the master")
	// ErrUnknownQueue is returned when a request names a queue that does
	// not exist: stats, peek, purge, delete and the operators' calls (a
	// put or a get makes its queue).
	ErrUnknownQueue = errors.New("unknown queue")
	// ErrQueueFull is returned when a put found its queue at its maximum length until its timeout.
	ErrQueueFull = errors.New("queue full")
	// ErrNotLeased is returned when a client acks, nacks or extends a task it does not hold.
	ErrNotLeased = errors.New("task not leased by this client")
	// ErrShuttingDown is returned when the master is shutting down.
	ErrShuttingDown = errors.New("master shutting down")
	// ErrMessageTooLarge is returned when a frame is longer than the maximum message size.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrUnknownOp is returned when a request names an operation the master does not know.
	ErrUnknownOp = errors.New("unknown operation")
	// ErrNoSuchTask is returned when a requeue, drop or run-now names a
	// task that is not in its queue as the call needs it (dead, delayed).
	ErrNoSuchTask = errors.New("no such task")
	// ErrMasterFull is returned when the master is at a resource limit:
	// a put when it holds --max-memory, a connection beyond --max-conns.
	// Retrying later may succeed.
	ErrMasterFull = errors.New("master full")
	// ErrDiskFull is returned when the master's data directory has no
	// room for a put. Nothing of the put was queued unless the error says
	// so; gets, acks and results go on, and retrying later may succeed.
	ErrDiskFull = errors.New("disk full")
	// ErrUnavailable is returned when the engine that keeps the queues
	// behind a gateway master does not answer for now (it is electing a
	// leader after losing a node). Retrying after a moment may succeed.
	ErrUnavailable = errors.New("queues unavailable")
	// ErrTooManyStreams is returned when a client has more calls in
	// progress on one connection than the master allows (--max-streams).
	ErrTooManyStreams = errors.New("too many concurrent calls on one connection")
	// ErrPermissionDenied is returned when a call is outside the
	// permissions of the key its client authenticated with (qmaster
	// --acl), as in "permission denied: key ingest may not get from
	// payroll". Retrying does not help; another key might.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrBadPreamble is returned when a connection does not start with the qm preamble.
	ErrBadPreamble = errors.New("not a qm client")
	// ErrUnsupportedVersion is returned when the two sides speak different protocol versions.
	ErrUnsupportedVersion = errors.New("unsupported protocol version")
	// ErrChainIgnored is returned by CompleteThenGet and PutThenGet when
	// the master ran the first request but not its Then: a master older
	// than the client. The caller makes the second call on its own.
	ErrChainIgnored = errors.New("the master ignored a chained request (it is older than this client)")
	// ErrClosed is returned by calls on a closed client.
	ErrClosed = errors.New("client closed")
)

// codes pairs each sentinel with its code, in the order CodeOf tries
// them, so that an error wrapping two sentinels always gets the same
// code. A condition of the master as a whole comes first, then one of the
// request, then one of a queue or task it names, and ErrInternal last;
// within each group, by code. The broader condition is the likelier
// cause of the narrower (a queue closed by a shutdown looks unknown), and
// the one the client can act on: retry later or elsewhere, rather than
// give up on the request.
var codes = []struct {
	code     Code
	sentinel error
}{
	{CodeShuttingDown, ErrShuttingDown},
	{CodeMasterFull, ErrMasterFull},
	{CodeDiskFull, ErrDiskFull},
	{CodeUnavailable, ErrUnavailable},
	{CodeTooManyStreams, ErrTooManyStreams},
	{CodeBadRequest, ErrBadRequest},
	{CodeTooLarge, ErrMessageTooLarge},
	{CodeUnknownOp, ErrUnknownOp},
	{CodePermissionDenied, ErrPermissionDenied},
	{CodeUnknownQueue, ErrUnknownQueue},
	{CodeQueueFull, ErrQueueFull},
	{CodeNotLeased, ErrNotLeased},
	{CodeNoSuchTask, ErrNoSuchTask},
	{CodeInternal, ErrInternal},
}

// CodeOf returns the wire code for err: the code of the sentinel it wraps,
// by the precedence of codes when it wraps several, or CodeInternal.
func CodeOf(err error) Code {
	for _, c := range codes {
		if errors.Is(err, c.sentinel) {
			return c.code
		}
	}
	return CodeInternal
}

// sentinelOf returns the sentinel of code, or nil if it has none.
func sentinelOf(code Code) error {
	for _, c := range codes {
		if c.code == code {
			return c.sentinel
		}
	}
	return nil
}

// RemoteError is an error reported by the master. It matches its code's
// sentinel with errors.Is.
type RemoteError struct {
	Code    Code
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Is reports whether target is the sentinel of e's code.
func (e *RemoteError) Is(target error) bool {
	s := sentinelOf(e.Code)
	return s != nil && s == target
}

// errorFromResponse turns a response's error fields into an error, or nil.
func errorFromResponse(r *Response) error {
	if r.Code == CodeOK {
		return nil
	}
	msg := r.Error
	if msg == "" {
		if s := sentinelOf(r.Code); s != nil {
			msg = s.Error()
		} else {
			msg = fmt.Sprintf("error code %d", r.Code)
		}
	}
	return &RemoteError{Code: r.Code, Message: msg}
}

// TooLargeError is a message longer than the size limit of the side that
// refused it. It matches ErrMessageTooLarge.
type TooLargeError struct {
	Size, Limit int
	// Skipped says that the frame's body was read and dropped, so the
	// stream is still in step (see Codec.Read).
	Skipped bool
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%v (%s > %s)", ErrMessageTooLarge, bytesize.Format(int64(e.Size)), bytesize.Format(int64(e.Limit)))
}

// Is reports whether target is ErrMessageTooLarge.
func (e *TooLargeError) Is(target error) bool { return target == ErrMessageTooLarge }
