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

	// ErrQueuedNotStored is returned, with the store's error, by a Put of
	// results that the store could not write yet (a full disk): they are
	// queued, and the store writes them once it can. The put must not be
	// sent again, or its results would be there twice.
	ErrQueuedNotStored = errors.New("results queued, not yet stored")
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

// TaskErrors joins one TaskError of err for each of the first
// maxNamedTasks ids, and one error wrapping err that counts the others;
// nil for no ids. A client may name a million tasks in one call: their
// error is still one line each for the first few, not 50 MB of text.
func TaskErrors(err error, ids []uint64) error {
	if len(ids) == 0 {
		return nil
	}
	named := ids[:min(len(ids), maxNamedTasks)]
	errs := make([]error, len(named), len(named)+1)
	for i, id := range named {
		errs[i] = &TaskError{ID: id, Err: err}
	}
	if more := len(ids) - len(named); more > 0 {
		errs = append(errs, fmt.Errorf("%d more tasks: %w", more, err))
	}
	return errors.Join(errs...)
}

// maxNamedTasks is how many tasks TaskErrors names.
const maxNamedTasks = 20

func notLeased(ids []uint64) error { return TaskErrors(ErrNotLeased, ids) }
