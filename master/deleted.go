package master

import (
	"sync"
	"time"
)

// deletedQueues remembers the queues clients deleted, and when, so that
// the results of tasks that named one as their reply queue, put before
// its deletion, do not make it again: a map that ends, interrupted or
// not, deletes its private reply queue, and the tasks it leaves still
// run. A task put after the deletion names a queue made anew, and its
// result is stored.
//
// It is this server's memory: a deletion through another gateway of a
// cluster, or before a restart, is not known here.
type deletedQueues struct {
	mu sync.Mutex
	at map[string]time.Time
}

// deletedFor is how long a deletion is remembered: longer than a task
// waits in a queue and runs, for all but the rarest.
const deletedFor = 24 * time.Hour

// maxDeleted bounds the deletions remembered; past it the oldest half go.
const maxDeleted = 100_000

func (d *deletedQueues) add(name string, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at = make(map[string]time.Time)
	}
	if len(d.at) >= maxDeleted {
		d.forgetLocked(at)
	}
	d.at[name] = at
}

// forgetLocked drops the deletions older than deletedFor, or, if none is,
// those older than the median.
func (d *deletedQueues) forgetLocked(now time.Time) {
	cut := now.Add(-deletedFor)
	n := len(d.at)
	for name, t := range d.at {
		if t.Before(cut) {
			delete(d.at, name)
		}
	}
	if len(d.at) < n {
		return
	}
	var sum time.Duration
	for _, t := range d.at {
		sum += now.Sub(t) / time.Duration(n)
	}
	cut = now.Add(-sum) // the mean age: about half are older
	for name, t := range d.at {
		if t.Before(cut) {
			delete(d.at, name)
		}
	}
}

// since returns when queue name was deleted, if it was within deletedFor.
func (d *deletedQueues) since(name string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.at[name]
	if ok && time.Since(t) > deletedFor {
		delete(d.at, name)
		return time.Time{}, false
	}
	return t, ok
}

// stale reports whether a result for reply queue dest of a task enqueued
// at enqueued is for a queue deleted since: last and lastAt cache the
// answer for the dest before, as a completion's results mostly share one.
func (d *deletedQueues) stale(dest string, enqueued time.Time, last *string, lastAt *time.Time) bool {
	if dest != *last {
		*last = dest
		*lastAt, _ = d.since(dest)
	}
	return !lastAt.IsZero() && enqueued.Before(*lastAt)
}
