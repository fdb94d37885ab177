package queue

import (
	"errors"
	"fmt"
)

var (
	// ErrUnknownQueue is returned when a queue that must exist does not.
	ErrUnknownQueue = errors.New("unknown queue")

	// ErrQueueFull is returned by Put when the batch does not fit in the
	// queue's max length before its ctx is done, or can never fit.
	ErrQueueFull = errors.New("queue full")

	// ErrNotLeased is returned (inside a *TaskError) when a task is not
	// leased by the client that acks, nacks, extends it.
	ErrNotLeased = errors.New("task not leased by this client")

	// ErrClosed is returned by every call after Close, and by Gets and Puts
	// that were blocked when Close was called.
	ErrClosed = errors.New("queue manager closed")

	// ErrBadQueueName is returned for an empty queue name, one longer than
	// MaxNameLen bytes, or one holding control characters or invalid UTF-8.
	ErrBadQueueName = errors.New("bad queue name")

	// ErrNoSuchTask is returned (inside a *TaskError) when a task named by
	// Requeue, Drop or RunNow is not in its queue as the call needs it
	// (dead, delayed).
	ErrNoSuchTask = errors.New("no such task")

	// ErrUnavailable is returned by queues kept in a replicated engine
	// (package jsqueue) while it does not answer: its stream is electing a
	// leader, or the gateway lost its connection. The call may be retried
	// after a moment; a put that fails so may have stored its tasks.
	ErrUnavailable = errors.New("queues unavailable for now; try again")

	// ErrBadArgument is returned (wrapped with the details) for a negative
	// length, lease or config value, or a Get max below 1.
	ErrBadArgument = errors.New("bad argument")
)

// TaskError reports which task an error is about, so a caller can tell
// the client which ids of a batch failed. Err is ErrNotLeased or
// ErrNoSuchTask.
type TaskError struct {
	ID  uint64
	Err error
}

// Error implements error.
func (e *TaskError) Error() string { return fmt.Sprintf("task %d: %v", e.ID, e.Err) }

// Unwrap returns Err, so errors.Is(err, ErrNotLeased) works.
func (e *TaskError) Unwrap() error { return e.Err }

// TaskErrors joins one TaskError of err per id; nil for no ids.
func TaskErrors(err error, ids []uint64) error {
	if len(ids) == 0 {
		return nil
	}
	errs := make([]error, len(ids))
	for i, id := range ids {
		errs[i] = &TaskError{ID: id, Err: err}
	}
	return errors.Join(errs...)
}

func notLeased(ids []uint64) error { return TaskErrors(ErrNotLeased, ids) }
