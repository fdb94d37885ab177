package queue

import (
	"fmt"
	"time"

	"github.com/qm-dev/qm/store"
)

// Policy is a queue's retry policy: how many deliveries a task gets and
// how long a failed one waits before the next. Zero fields take the
// Manager's defaults (Config); a negative BackoffMin means no backoff
// whatever the default.
type Policy = store.Policy

// Bounds of a Policy.
const (
	MaxMaxAttempts = 1000
	MaxBackoff     = 365 * 24 * time.Hour
)

// CheckPolicy reports what is wrong with p, or nil.
func CheckPolicy(p Policy) error {
	switch {
	case p.MaxAttempts < 0 || p.MaxAttempts > MaxMaxAttempts:
		return fmt.Errorf("%w: max attempts must be 0 (the default) to %d, got %d", ErrBadArgument, MaxMaxAttempts, p.MaxAttempts)
	case p.BackoffMin < 0 && (p.BackoffMin != -1 || p.BackoffMax != 0):
		return fmt.Errorf("%w: a negative backoff must be -1 (none) with no maximum, got %v..%v", ErrBadArgument, p.BackoffMin, p.BackoffMax)
	case p.BackoffMax < 0 || p.BackoffMax > MaxBackoff || p.BackoffMin > MaxBackoff:
		return fmt.Errorf("%w: backoff must be between 0 and %v, got %v..%v", ErrBadArgument, MaxBackoff, p.BackoffMin, p.BackoffMax)
	case p.BackoffMin == 0 && p.BackoffMax != 0:
		return fmt.Errorf("%w: a backoff maximum (%v) needs a minimum", ErrBadArgument, p.BackoffMax)
	case p.BackoffMax != 0 && p.BackoffMax < p.BackoffMin:
		return fmt.Errorf("%w: backoff maximum %v is below its minimum %v", ErrBadArgument, p.BackoffMax, p.BackoffMin)
	}
	return nil
}

// effective fills p's zero fields from the Manager's defaults.
func (m *Manager) effective(p Policy) Policy {
	return Effective(p, Policy{MaxAttempts: m.cfg.MaxAttempts, BackoffMin: m.cfg.RetryBackoffMin, BackoffMax: m.cfg.RetryBackoffMax})
}

// Effective is policy p in effect where defaults are the defaults: its
// zero fields filled from them, a negative BackoffMin as no backoff.
func Effective(p, defaults Policy) Policy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = defaults.MaxAttempts
	}
	if p.BackoffMin == 0 {
		p.BackoffMin, p.BackoffMax = defaults.BackoffMin, defaults.BackoffMax
	}
	if p.BackoffMin < 0 {
		p.BackoffMin, p.BackoffMax = 0, 0
	}
	if p.BackoffMax < p.BackoffMin {
		p.BackoffMax = p.BackoffMin
	}
	return p
}

// SetPolicy sets the retry policy of the named queue, creating it if
// needed; the zero Policy goes back to the Manager's defaults. It applies
// to the attempts that fail from now on. With a store, it is durable when
// SetPolicy returns.
func (m *Manager) SetPolicy(name string, p Policy) error {
	if err := CheckPolicy(p); err != nil {
		return err
	}
	if IsDeadLetterName(name) {
		return fmt.Errorf("%w: %q is a dead-letter queue: its tasks are not retried", ErrBadArgument, name)
	}
	if err := CheckName(name); err != nil {
		return err
	}
	if m.closed.Load() {
		return ErrClosed
	}
	if err := m.writable(); err != nil {
		return err
	}
	// Held across the queue's update too, so that racing SetPolicys leave
	// the map, the queue and the store agreeing. A queue made anew while
	// it is held reads the map once it is released.
	m.policyMu.Lock()
	if p == (Policy{}) {
		delete(m.policies, name)
	} else {
		m.policies[name] = p
	}
	var ticket store.Ticket
	if m.store != nil {
		ticket = m.store.Append(store.Op{Kind: store.SetPolicy, Task: store.Task{Queue: name}, Policy: p})
	}
	m.policyMu.Unlock()
	for {
		// Made outside policyMu: making a queue reads the policies.
		q, err := m.lookupOrCreate(name)
		if err != nil {
			return err
		}
		q.mu.Lock()
		if q.deleted { // made anew meanwhile, maybe with the old policy
			q.mu.Unlock()
			continue
		}
		q.policy = m.policyOf(name) // the latest, should another SetPolicy have come between
		q.mu.Unlock()
		break
	}
	return m.wait(ticket)
}

// policyOf returns the policy set for the named queue (zero if none).
func (m *Manager) policyOf(name string) Policy {
	m.policyMu.Lock()
	defer m.policyMu.Unlock()
	return m.policies[name]
}
