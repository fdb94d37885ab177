package worker

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrUnknownBuiltin is returned by Builtin for a name it does not know.
	ErrUnknownBuiltin = errors.New("unknown builtin handler")
	// ErrLeaseLost is the cause of a handler's ctx cancellation when the
	// master no longer holds its task for this worker: the connection
	// dropped or the lease could not be renewed, so the task goes (or went)
	// to another worker and this result would be discarded.
	ErrLeaseLost = errors.New("task lease lost")
	// ErrDrainTimeout is the cause of a handler's ctx cancellation when the
	// worker's drain ran past Config.DrainTimeout: its task was given back
	// to the master for another worker. It wraps ErrLeaseLost.
	ErrDrainTimeout = fmt.Errorf("drain timed out; task given back to the master: %w", ErrLeaseLost)
)

// RetryAfter wraps err, a handler's failure, with how long the task should
// wait before its next delivery, instead of its queue's retry backoff:
// for a service that said when to come back (HTTP 429 or 503 with a
// Retry-After header, say).
//
//	return nil, worker.RetryAfter(30*time.Second, err)
//
// d is taken between 0 (at once, not the queue's backoff) and a year
// (maxRetryAfter), the most a master accepts. It always fails the
// attempt: with err nil, with the error "retry later" (unlike the
// wrapping of pkg/errors, where nil stays nil).
func RetryAfter(d time.Duration, err error) error {
	if err == nil {
		err = errors.New("retry later")
	}
	// The protocol's 0 is "unset", the queue's backoff: at once is the
	// least wait there is.
	return &retryAfterError{after: min(max(d, time.Nanosecond), maxRetryAfter), err: err}
}

type retryAfterError struct {
	after time.Duration
	err   error
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// NoRetry wraps err, a handler's failure, to say that the task would
// fail again however often it ran (its input is bad, say): it goes to its
// queue's dead-letter queue now, with err as its last error, rather than
// use up its attempts. (The master keeps the dead-letter queue's tasks:
// an operator can requeue them once the cause is fixed.)
//
//	return nil, worker.NoRetry(fmt.Errorf("not an image: %w", err))
//
// A master older than this package retries the task as any failed one.
// It always fails the task: with err nil, with the error "failed; not to
// be retried" (unlike the wrapping of pkg/errors, where nil stays nil), so
// call it only on a failure.
func NoRetry(err error) error {
	if err == nil {
		err = errors.New("failed; not to be retried")
	}
	return &noRetryError{err: err}
}

type noRetryError struct{ err error }

func (e *noRetryError) Error() string { return e.err.Error() }
func (e *noRetryError) Unwrap() error { return e.err }

// isNoRetry reports whether a handler's error asks for no retry
// (NoRetry; a --stdio child's "!fail" line becomes one).
func isNoRetry(err error) bool {
	var nr *noRetryError
	return errors.As(err, &nr)
}

// retryAfterOf returns the wait a handler's error asks for (RetryAfter;
// a --stdio child's retry line becomes one), or 0.
func retryAfterOf(err error) time.Duration {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.after
	}
	return 0
}

// GiveBackNow returns err marked for Run: cancelling Run's ctx with it as
// the cause (context.WithCancelCause) makes the drain give the running
// tasks back at once, as a drain past Config.DrainTimeout does, whatever
// DrainTimeout is. It is for a worker whose handlers cannot do their
// tasks (qworker's --stdio command that cannot run here): their tasks
// then neither wait for them nor fail an attempt. Its text is err's, and
// it wraps err.
func GiveBackNow(err error) error { return giveBackNow{err} }

type giveBackNow struct{ error }

func (e giveBackNow) Unwrap() error { return e.error }

// givesBackNow reports whether cause is marked by GiveBackNow.
func givesBackNow(cause error) bool {
	var g giveBackNow
	return errors.As(cause, &g)
}
