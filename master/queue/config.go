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
	// MaxLen is the initial max length (ready+leased) of every queue,
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
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
