package queue

import (
	"sync"
	"sync/atomic"

	"github.com/qm-dev/qm/store"
)

// idBlock is how many task IDs one reservation covers: the store writes
// (and fsyncs) a file once per idBlock/2 IDs put, and a restart skips
// at most idBlock IDs.
const idBlock = 1 << 20

// idReservation keeps the task IDs handed out below a bound the store
// has recorded (store.IDReserver). A get may take a task before its put
// is durable; after a crash that loses the put, the master restarted
// starts its IDs above the bound, so the ID the get saw names no other
// task.
type idReservation struct {
	st    store.IDReserver
	limit atomic.Uint64 // the highest ID that may be handed out
	mu    sync.Mutex    // one reservation at a time
}

// ensure makes room for n more IDs after next, the last given, before a
// put takes its queue's lock: it reserves the next block once less than
// half of this one is left, so that the put that runs into the bound
// (cover) is rare. An error is the store's (a full disk).
func (r *idReservation) ensure(next uint64, n int) error {
	want := next + uint64(n) + idBlock/2
	if want <= r.limit.Load() {
		return nil
	}
	return r.reserve(want)
}

// cover makes sure ID last may be handed out, reserving first if it may
// not: puts that ran past ensure's margin together. Called with a
// queue's lock held. An error is the store's: the ID is handed out all
// the same (results are taken on a full disk, and a put's tasks are
// pushed already), and the next ensure tries again.
func (r *idReservation) cover(last uint64) error {
	if last <= r.limit.Load() {
		return nil
	}
	return r.reserve(last + idBlock/2)
}

// reserve records IDs up to want and a block beyond it.
func (r *idReservation) reserve(want uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if want <= r.limit.Load() {
		return nil // another put reserved meanwhile
	}
	upTo := want + idBlock/2
	if err := r.st.ReserveIDs(upTo); err != nil {
		return err
	}
	r.limit.Store(upTo)
	return nil
}
