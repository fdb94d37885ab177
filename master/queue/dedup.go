package queue

import (
	"slices"
	"time"

	"github.com/qm-dev/qm/store"
)

// MaxKeyLen bounds an idempotency key, in bytes.
const MaxKeyLen = 256

// DefaultDedupWindow is how long an idempotency key is remembered when
// Config.DedupWindow is 0.
const DefaultDedupWindow = 2 * time.Minute

// keyTable remembers a queue's idempotency keys for the dedup window: a
// put with a key seen within it adds nothing and returns the first task's
// ID. Keys are forgotten in the order they were put, oldest first, by a
// sweep on each keyed put and each timer pass: no timer per key.
type keyTable struct {
	ids   map[string]keyEntry
	order []keyRef // by put time, oldest first, from head
	head  int
}

type keyEntry struct {
	id     uint64
	at     int64        // when the key was put, unix nanoseconds
	ticket store.Ticket // the store's ticket of that put: a repeat waits for it
}

type keyRef struct {
	key string
	at  int64
}

func (k *keyTable) len() int { return len(k.ids) }

// lookup returns the ID of the task put with key, if it is remembered.
func (k *keyTable) lookup(key string) (uint64, bool) {
	e, ok := k.ids[key]
	return e.id, ok
}

// ticket returns the store ticket of the put that added key.
func (k *keyTable) ticket(key string) store.Ticket { return k.ids[key].ticket }

// setTicket records the store ticket of the put that added key.
func (k *keyTable) setTicket(key string, t store.Ticket) {
	if e, ok := k.ids[key]; ok {
		e.ticket = t
		k.ids[key] = e
	}
}

// forget drops the keys of ts, tasks a failed put takes back, and
// returns them. Rare (a full disk), so a walk over the table is fine.
func (k *keyTable) forget(ts []Task) []string {
	if len(k.ids) == 0 || len(ts) == 0 {
		return nil
	}
	gone := make(map[uint64]bool, len(ts))
	for i := range ts {
		gone[ts[i].ID] = true
	}
	var keys []string
	for key, e := range k.ids {
		if gone[e.id] {
			delete(k.ids, key)
			keys = append(keys, key)
		}
	}
	return keys
}

// drop forgets key, and reports whether it was remembered.
func (k *keyTable) drop(key string) bool {
	_, ok := k.ids[key]
	delete(k.ids, key)
	return ok
}

// add remembers key for the task id, put at at.
func (k *keyTable) add(key string, id uint64, at int64) {
	if k.ids == nil {
		k.ids = make(map[string]keyEntry)
	}
	k.ids[key] = keyEntry{id: id, at: at}
	k.order = append(k.order, keyRef{key: key, at: at})
}

// expire forgets the keys put at or before cut (unix nanoseconds).
func (k *keyTable) expire(cut int64) {
	for k.head < len(k.order) && k.order[k.head].at <= cut {
		r := k.order[k.head]
		if e, ok := k.ids[r.key]; ok && e.at == r.at {
			delete(k.ids, r.key)
		}
		k.order[k.head] = keyRef{}
		k.head++
	}
	if k.head == len(k.order) {
		k.order, k.head = k.order[:0], 0
	} else if k.head > 1024 && k.head > len(k.order)/2 {
		k.order = slices.Delete(k.order, 0, k.head)
		k.head = 0
	}
	if len(k.ids) == 0 {
		k.ids = nil // a queue that stopped using keys gives the map back
	}
}

// dump emits every remembered key as a store.Key op. Called with the
// queue's lock held.
func (k *keyTable) dump(queue string, emit func(*store.Op) error) error {
	op := store.Op{Kind: store.Key}
	for key, e := range k.ids {
		op.Task = store.Task{ID: e.id, Queue: queue, Key: key, Enqueued: time.Unix(0, e.at)}
		if err := emit(&op); err != nil {
			return err
		}
	}
	return nil
}
