package queue

import (
	"fmt"
	"time"

	"github.com/qm-dev/qm/store"
)

// Defaults used for zero Config fields.
const (
	DefaultMaxAttempts = 3
	DefaultLease       = 30 * time.Second
)

// Config of a Manager. Zero values mean the defaults.
type Config struct {
	// MaxAttempts is how many deliveries a task gets before a failed one is
	// dead-lettered; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// DefaultLease is the lease when a Get or Extend passes 0; 0 means
	// DefaultLease (30s).
	DefaultLease time.Duration
	// RetryBackoffMin and RetryBackoffMax are the default retry backoff
	// of every queue (see Policy); 0 means none: a failed task is
	// delivered again at once.
	RetryBackoffMin, RetryBackoffMax time.Duration
	// DedupWindow is how long a put's idempotency key is remembered; 0
	// means DefaultDedupWindow.
	DedupWindow time.Duration
	// MaxLen is the initial max length (ready, delayed and leased) of every queue,
	// changed per queue with SetMaxLen; 0 means unlimited.
	MaxLen int
	// OnDead is called for each task moved to a dead-letter queue, with the
	// name of the queue it came from, so the caller can publish an error
	// result. It is called outside every lock, synchronously, from the
	// goroutine that caused the move (Nack, ExpireLeases or Release). It may
	// call the Manager. May be nil.
	OnDead func(queue string, t Task)
	// Now returns the current time; nil means time.Now. Tests may pass a
	// fake clock. It is called with a queue lock held, so it must not call
	// the Manager.
	Now func() time.Time
	// Store, if not nil, keeps the tasks durable: New loads them from it,
	// every change is appended to it, and a Put (or Ack, Purge, Delete)
	// returns only once its change is durable. nil keeps the queues in
	// memory only, at no cost. The Manager does not close it.
	Store store.Store
}

// Validate reports a negative field as an error naming it.
func (c Config) Validate() error {
	if c.MaxAttempts < 0 {
		return fmt.Errorf("%w: MaxAttempts must be >= 0, got %d", ErrBadArgument, c.MaxAttempts)
	}
	if c.DefaultLease < 0 {
		return fmt.Errorf("%w: DefaultLease must be >= 0, got %v", ErrBadArgument, c.DefaultLease)
	}
	if c.DedupWindow < 0 {
		return fmt.Errorf("%w: DedupWindow must be >= 0, got %v", ErrBadArgument, c.DedupWindow)
	}
	if err := CheckPolicy(Policy{MaxAttempts: min(c.MaxAttempts, MaxMaxAttempts), BackoffMin: c.RetryBackoffMin, BackoffMax: c.RetryBackoffMax}); err != nil {
		return err
	}
	if c.MaxLen < 0 {
		return fmt.Errorf("%w: MaxLen must be >= 0, got %d", ErrBadArgument, c.MaxLen)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.DefaultLease == 0 {
		c.DefaultLease = DefaultLease
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
