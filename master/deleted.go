package master

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// deletedQueues remembers the queues clients deleted, and when, so that
// the results of tasks that named one as their reply queue, put before
// its deletion, do not make it again: a map that ends, interrupted or
// not, deletes its private reply queue, and those of its tasks that were
// running finish. A task put after the deletion names a queue made anew, and its
// result is stored.
//
// It is this server's memory, told of the deletions through the other
// gateways of a cluster as they are made (noteDeleted), and kept across a
// restart by queues that can (DeletionKeeper: a data directory, a
// cluster's engine). A gateway that missed a notice learns that
// deletion from the cluster's engine (DeletionWatcher).
//
// A deletion may also cancel the tasks that name the queue as their reply
// queue (wire.Request.CancelTasks): those put before it are dropped as a
// get would hand them out (Server.getTasks).
type deletedQueues struct {
	mu sync.RWMutex
	at map[string]deletion
	// cancelling counts the deletions in at that cancel tasks, so that a
	// get looks for none while there are none.
	cancelling atomic.Int64
}

type deletion struct {
	at time.Time // the last deletion: results of tasks put before it go nowhere
	// cancelAt is the last deletion that cancelled tasks (zero: none
	// did): the tasks put before it are dropped. A plain deletion after
	// it leaves it.
	cancelAt time.Time
	told     bool // a cancellation of its tasks was logged
}

// deletedFor is how long a deletion is remembered.
const deletedFor = queue.DeletionKept

// maxDeleted bounds the deletions remembered; past it the oldest half go.
const maxDeleted = 100_000

// add notes that queue name was deleted at at; with cancel, the tasks put
// before then that reply to it are cancelled as well. Each time only
// moves forward: a deletion heard of late (another gateway's) changes
// nothing a later one set.
func (d *deletedQueues) add(name string, at time.Time, cancel bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at = make(map[string]deletion)
	}
	if len(d.at) >= maxDeleted {
		d.forgetLocked(at)
	}
	del := d.at[name]
	if at.After(del.at) {
		del.at = at
	}
	if cancel && at.After(del.cancelAt) {
		del.cancelAt = at
	}
	d.set(name, del)
}

// set records del for name, keeping cancelling its count. Called with mu
// held.
func (d *deletedQueues) set(name string, del deletion) {
	if !d.at[name].cancelAt.IsZero() {
		d.cancelling.Add(-1)
	}
	if !del.cancelAt.IsZero() {
		d.cancelling.Add(1)
	}
	d.at[name] = del
}

// drop forgets the deletion of name. Called with mu held.
func (d *deletedQueues) drop(name string) {
	if !d.at[name].cancelAt.IsZero() {
		d.cancelling.Add(-1)
	}
	delete(d.at, name)
}

// forgetLocked drops the deletions older than deletedFor, or, if none is,
// those older than the median.
func (d *deletedQueues) forgetLocked(now time.Time) {
	cut := now.Add(-deletedFor)
	n := len(d.at)
	for name, del := range d.at {
		if del.at.Before(cut) {
			d.drop(name)
		}
	}
	if len(d.at) < n {
		return
	}
	var sum time.Duration
	for _, del := range d.at {
		sum += now.Sub(del.at) / time.Duration(n)
	}
	cut = now.Add(-sum) // the mean age: about half are older
	for name, del := range d.at {
		if del.at.Before(cut) {
			d.drop(name)
		}
	}
	for name := range d.at { // all of an age: any half
		if len(d.at) <= maxDeleted/2 {
			break
		}
		d.drop(name)
	}
}

// since returns when queue name was deleted, if it was within deletedFor.
func (d *deletedQueues) since(name string) (time.Time, bool) {
	del, ok := d.lookup(name)
	return del.at, ok
}

// lookup returns the deletion of name, if it was within deletedFor, and
// forgets an older one.
func (d *deletedQueues) lookup(name string) (deletion, bool) {
	d.mu.RLock()
	del, ok := d.at[name]
	d.mu.RUnlock()
	if !ok {
		return deletion{}, false
	}
	if time.Since(del.at) > deletedFor {
		d.mu.Lock()
		if del, ok := d.at[name]; ok && time.Since(del.at) > deletedFor {
			d.drop(name)
		}
		d.mu.Unlock()
		return deletion{}, false
	}
	return del, true
}

// cancelled reports whether task t was cancelled: its reply queue was
// deleted after it was put, with its tasks (deletedQueues.add's cancel).
// last caches the deletion looked up for the reply queue before, as the
// tasks of one get mostly share one.
func (d *deletedQueues) cancelled(t *queue.Task, last *cancelCache) bool {
	if t.ReplyTo == "" || d.cancelling.Load() == 0 {
		return false
	}
	if last.name != t.ReplyTo { // never "": checked above
		del, _ := d.lookup(t.ReplyTo)
		*last = cancelCache{name: t.ReplyTo, cancelAt: del.cancelAt}
	}
	return t.Enqueued.Before(last.cancelAt)
}

// cancelCache is cancelled's answer for one reply queue.
type cancelCache struct {
	name     string // the reply queue, "" before the first lookup
	cancelAt time.Time
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

// unwanted returns queue.PutRequest.Unwanted for results of tasks put
// into queue dest: whether every one was put before dest's last deletion
// (stale of each). It is nil unless every task named dest as its reply
// queue: the results of the others are always wanted.
func (d *deletedQueues) unwanted(dest string, tasks []queue.Task) func() bool {
	if len(tasks) == 0 {
		return nil
	}
	last := tasks[0].Enqueued
	for i := range tasks {
		if tasks[i].ReplyTo != dest {
			return nil
		}
		if tasks[i].Enqueued.After(last) {
			last = tasks[i].Enqueued
		}
	}
	return func() bool {
		at, ok := d.since(dest)
		return ok && last.Before(at)
	}
}

// firstCancel reports whether tasks replying to name are cancelled for
// the first time since its deletion: the master logs that once.
func (d *deletedQueues) firstCancel(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	del, ok := d.at[name]
	if !ok || del.told {
		return false
	}
	del.told = true
	d.at[name] = del
	return true
}

// restore sets the deletion of name to d, a kept one, unless what is
// remembered is later.
func (d *deletedQueues) restore(name string, kept queue.Deletion) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at = make(map[string]deletion)
	}
	if len(d.at) >= maxDeleted {
		d.forgetLocked(time.Now())
	}
	del := d.at[name]
	if kept.At.After(del.at) {
		del.at = kept.At
	}
	if kept.CancelAt.After(del.cancelAt) {
		del.cancelAt = kept.CancelAt
	}
	d.set(name, del)
}

// keepDeletion stores the deletion of name, as remembered now, where the
// queues keep deletions across a restart. A failure (a full disk, a
// cluster without quorum) leaves it remembered here until this server
// stops: it is logged, and the delete stands.
func (s *Server) keepDeletion(name string) {
	if s.keeper == nil {
		return
	}
	del, ok := s.deleted.lookup(name)
	if !ok {
		return
	}
	if err := s.keeper.KeepDeletion(name, queue.Deletion{At: del.at, CancelAt: del.cancelAt}); err != nil {
		s.log.Warn("a queue's deletion is not stored: after a restart, results of the tasks put before it may make the queue again, and the tasks it cancelled may run",
			"queue", name, "err", err)
	}
}

// recallDeletions loads the deletions the queues kept.
func (s *Server) recallDeletions() error {
	kept, err := s.keeper.Deletions()
	if err != nil {
		return err
	}
	for name, d := range kept {
		s.deleted.restore(name, d)
	}
	return nil
}

// watchDeletions learns the deletions w keeps, those another gateway
// could not tell this one of included, until the server stops; unread
// says those kept were not read as the server started.
func (s *Server) watchDeletions(w DeletionWatcher, unread bool) {
	w.WatchDeletions(s.ctx, s.deleted.restore, func() {
		if unread {
			s.log.Info("the deletions of queues kept are read")
			unread = false
		}
	})
}

// recallDeletionsLater calls recallDeletions until it succeeds or the
// server stops: a cluster's engine may not answer yet as a gateway
// starts.
func (s *Server) recallDeletionsLater() {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if s.recallDeletions() == nil {
				s.log.Info("the deletions of queues kept are read")
				return
			}
		}
	}
}
