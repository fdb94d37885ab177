package queue

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/store"
)

// idBlock is how many task IDs one reservation covers: the store writes
// (and fsyncs) a file once per idBlock/2 IDs put, and a restart skips
// at most idBlock IDs. A variable for tests.
var idBlock uint64 = 1 << 20

// idRetryEvery is how long a failed reservation (a full disk) is not
// tried again: puts in the meantime fail, or, under a queue's lock,
// carry on, at once.
const idRetryEvery = time.Second

// idReservation keeps the task IDs handed out below a bound the store has
// recorded (store.IDReserver). A get may take a task before its put is
// durable; after a crash that loses the put, the master restarted starts
// its IDs above the bound, so the ID the get saw names no other task.
//
// The bound is kept a block ahead: reserved as the queues load, and
// again, by one put at a time and off the queues' locks, once less than
// half a block is left (ensure). A put reserves under a queue's lock
// (cover) only if puts together ran through that half block meanwhile,
// or the disk refused the reservations before.
type idReservation struct {
	st        store.IDReserver
	block     uint64        // idBlock
	limit     atomic.Uint64 // the highest ID that may be handed out
	refilling atomic.Bool   // a put is reserving the next block ahead of need

	mu       sync.Mutex // one reservation at a time
	failedAt time.Time  // of the last failed reservation, under mu
	failed   error
}

// ensure makes room for n more IDs after next, the last given, before a
// put takes its queue's lock. An error is the store's (a full disk): the
// IDs are not reserved.
func (r *idReservation) ensure(next uint64, n int) error {
	end := next + uint64(n)
	limit := r.limit.Load()
	switch {
	case end+r.block/2 <= limit:
		return nil
	case end <= limit:
		// Room still: one put reserves the next block, the others go on.
		if r.refilling.CompareAndSwap(false, true) {
			_ = r.reserve(end) // failed: the next put past the bound says so
			r.refilling.Store(false)
		}
		return nil
	}
	return r.reserve(end)
}

// cover makes sure ID last may be handed out, reserving first if it may
// not. Called with a queue's lock held. An error is the store's: a put of
// tasks is refused (push); results are taken on a full disk, their IDs
// above the bound, which a crash before the store takes a reservation
// may give to another task again.
func (r *idReservation) cover(last uint64) error {
	if last <= r.limit.Load() {
		return nil
	}
	return r.reserve(last)
}

// reserve records the IDs up to want and a block beyond, unless a
// reservation failed within idRetryEvery: then it returns that failure.
func (r *idReservation) reserve(want uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if want+r.block/2 <= r.limit.Load() {
		return nil // another put reserved meanwhile
	}
	if r.failed != nil && time.Since(r.failedAt) < idRetryEvery {
		return r.failed
	}
	upTo := want + r.block
	if err := r.st.ReserveIDs(upTo); err != nil {
		r.failed, r.failedAt = err, time.Now()
		return err
	}
	r.failed = nil
	r.limit.Store(upTo)
	return nil
}
