package queue

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/qm-dev/qm/store"
)

// PutRequest is what Put adds to a queue.
type PutRequest struct {
	// Queue is the queue's name; Put creates the queue on first use.
	Queue string
	// Items are the tasks to add, in order. Put keeps their Payload
	// slices: the caller must not modify them afterwards.
	Items []Item
	// Results marks the items as results: they are never refused for the
	// queue's max length, so that no result is dropped, and if their
	// write to the store fails they stay queued, to be written once the
	// store can.
	Results bool
	// MaxWait bounds how long a Put waits for room, as well as ctx does;
	// 0 means ctx alone.
	MaxWait time.Duration
	// RequestID, if not empty, makes the whole put idempotent: a put
	// with the same ID in the same queue within the dedup window adds
	// nothing and returns the first one's IDs. It is remembered as one
	// key, its first task's, so it costs one entry per put where item
	// keys cost one per item. At most MaxKeyLen bytes; the items may
	// not have keys of their own.
	RequestID string
	// Resent, with RequestID, says the put may have been sent before
	// (wire.PutOptions.Resent). A Manager stores a put once whatever it
	// says; a gateway lays the put out as the first send did.
	Resent bool
	// ResultsOf, with Results, says whose results the items are: the
	// queue and the tasks, as handed out, in the items' order. A Manager
	// stores their acks with the results, in one append (see
	// AckRequest.Publish): the tasks must be acked already, gone from
	// memory. Queues whose tasks carry delivery tokens (a gateway's)
	// store the result of the same delivery once within the dedup
	// window, for a completion may reach two gateways: the worker's
	// connection lost after the first stored its results, and before it
	// acked.
	ResultsOf ResultsOf
	// Repeats, if not nil, is set by a Put that succeeds to how many items
	// it did not store because an item of the same key was stored within
	// the dedup window, by an earlier put or earlier in this one (their
	// IDs are those items'). A put repeated by its request ID is the same
	// put sent again, not a repeat of keys: 0.
	Repeats *int
	// Unwanted, with Results, if not nil, reports whether the results'
	// queue was deleted after their tasks were put, so that they go
	// nowhere (a map that ended deletes its reply queue). A gateway that
	// finds the queue's stream gone asks it, before and after a pause,
	// rather than make the queue anew for no one: a put it says true of
	// stores nothing and returns no IDs and no error. A Manager does not
	// ask it.
	Unwanted func() bool
}

// ResultsOf names the tasks a put's results are of.
type ResultsOf struct {
	Queue string
	Tasks []Task
}

// ReservedKeyPrefix starts every key the queues make themselves (a
// request's, and those another implementation of the queues makes); no
// item key may start with it (CheckItems), so that none can be taken for
// another.
const ReservedKeyPrefix = "\x00"

// requestKeyPrefix starts the key that stands for a whole put with a
// request ID. Item keys may not start with it (CheckItems), so neither
// can be taken for the other.
const requestKeyPrefix = ReservedKeyPrefix + "request\x00"

// RequestKey is the key a put with the request ID id is remembered by.
// No item key starts as it does (CheckItems), so another implementation
// of the queues may build IDs from it that no item key can take.
func RequestKey(id string) string { return requestKeyPrefix + id }

// isRequestKey reports whether key stands for a whole put (RequestKey).
func isRequestKey(key string) bool { return strings.HasPrefix(key, requestKeyPrefix) }

// CheckRequestID reports, wrapping ErrBadArgument, what is wrong with
// req's request ID: too long, or given with item keys. Put checks it; so
// may another implementation of the queues.
func CheckRequestID(req PutRequest) error {
	if req.RequestID == "" {
		return nil
	}
	if len(req.RequestID) > MaxKeyLen {
		return fmt.Errorf("%w: a request ID is at most %d bytes, got %d", ErrBadArgument, MaxKeyLen, len(req.RequestID))
	}
	for i := range req.Items {
		if req.Items[i].Key != "" {
			return fmt.Errorf("%w: a put takes idempotency keys or a request ID, not both", ErrBadArgument)
		}
	}
	return nil
}

// requestItems returns req's items, the first with the key that stands
// for the whole put when req has a request ID, or says what is wrong
// with the ID.
func requestItems(req PutRequest) ([]Item, error) {
	if err := CheckRequestID(req); err != nil {
		return nil, err
	}
	if req.RequestID == "" || len(req.Items) == 0 {
		return req.Items, nil
	}
	items := slices.Clone(req.Items)
	items[0].Key = RequestKey(req.RequestID)
	return items, nil
}

// NoWait is a context that is done already: a Get or Put under it takes
// what it can at once and never waits.
var NoWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// Put appends req.Items to the named queue, creating it on first use, and
// returns their new ids: unique across all queues of the Manager, and
// increasing.
//
// If the queue has a max length and the batch does not fit, Put waits, in
// FIFO order with other waiting Puts, until it fits or ctx is done; then it
// returns ErrQueueFull and nothing of the batch is added. req.MaxWait
// bounds the wait as ctx does. A batch larger
// than the max length fails at once with ErrQueueFull.
//
// With a store, Put returns once the batch is written. If the write fails
// (a full disk), the error says so, and Put takes back the tasks that no
// get took meanwhile and returns the ids of those a get did (see
// withdraw); results stay queued.
func (m *Manager) Put(ctx context.Context, req PutRequest) ([]uint64, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	if req.MaxWait < 0 {
		return nil, fmt.Errorf("%w: max wait must be >= 0, got %v", ErrBadArgument, req.MaxWait)
	}
	if err := CheckItems(req.Items, m.now()); err != nil {
		return nil, err
	}
	if req.ResultsOf.Tasks != nil && (!req.Results || len(req.ResultsOf.Tasks) != len(req.Items)) {
		// Their acks would be stored with the wrong items, or not at all.
		return nil, fmt.Errorf("%w: the tasks of %d results named for %d items", ErrBadArgument, len(req.ResultsOf.Tasks), len(req.Items))
	}
	items, err := requestItems(req)
	if err != nil {
		return nil, err
	}
	req.Items = items
	if len(req.Items) == 0 {
		if _, err := m.lookupOrCreate(req.Queue); err != nil {
			return nil, err
		}
		return []uint64{}, nil
	}
	// Results are taken while the store refuses writes, as acks are (see
	// store.Store.Writable): their tasks are gone from memory already,
	// and their acks are appended with them.
	if err := m.writable(); err != nil && !req.Results {
		return nil, err
	}
	if m.ids != nil {
		if err := m.ids.ensure(m.nextID.Load(), len(req.Items)); err != nil && !req.Results {
			return nil, err
		}
	}
	c := clock{m: m, t: m.now(), ok: true}
	for {
		q, err := m.lockOrCreate(req.Queue)
		if err != nil {
			return nil, err
		}
		// A put that only repeats keys adds nothing: it need not wait
		// behind others for room it does not take. (Keys past the window
		// are dropped first: they no longer make a put a repeat.)
		if q.keys.len() > 0 {
			q.keys.expire(c.now().Add(-m.cfg.DedupWindow).UnixNano())
		}
		if req.Results || q.maxLen == 0 || q.putters.head == nil && q.fits(q.adds(req.Items)) || q.adds(req.Items) == 0 {
			var acked []Task
			if req.Results && len(req.ResultsOf.Tasks) == len(req.Items) && m.store != nil {
				acked = req.ResultsOf.Tasks
			}
			ids, first, ticket, err := q.push(req.Items, acked, req.Results, &c)
			if err != nil { // nothing pushed
				q.mu.Unlock()
				return nil, err
			}
			q.settle(&c)
			m.unlock(q)
			// Getters may have the tasks already: see docs/STORAGE.md.
			if err := m.wait(ticket); err != nil {
				if req.Results { // the log writes them once it can
					return nil, fmt.Errorf("%w: %w", ErrQueuedNotStored, err)
				}
				return m.withdraw(req.Queue, req.Items[0].Key, ids, first, err)
			}
			setRepeats(req, ids, first)
			return ids, nil
		}
		if q.adds(req.Items) > q.maxLen || ctx.Err() != nil {
			q.mu.Unlock()
			return nil, ErrQueueFull
		}
		p := &putter{items: req.Items, ch: make(chan putResult, 1)}
		q.putters.pushBack(p)
		q.mu.Unlock()

		var (
			r        putResult
			got      bool
			timedOut <-chan time.Time
		)
		if req.MaxWait > 0 {
			timer := time.NewTimer(req.MaxWait) // a blocked put is rare: no pool
			defer timer.Stop()
			timedOut = timer.C
		}
		select {
		case r = <-p.ch:
			got = true
		case <-ctx.Done():
		case <-timedOut:
		case <-m.closedCh:
		}
		if !got {
			if testHookWoken != nil {
				testHookWoken()
			}
			q.mu.Lock()
			if p.served {
				r, got = <-p.ch, true // sent before we took the lock
				q.mu.Unlock()
			} else {
				q.putters.remove(p)
				q.settle(&clock{m: m}) // p may have held back smaller batches behind it
				m.unlock(q)
			}
		}
		switch {
		case got && r.err != nil:
			return nil, r.err
		case got && !r.retry:
			if err := m.wait(r.ticket); err != nil {
				return m.withdraw(req.Queue, req.Items[0].Key, r.ids, r.first, err)
			}
			setRepeats(req, r.ids, r.first)
			return r.ids, nil
		case m.closed.Load():
			return nil, ErrClosed
		case got: // the queue was deleted: start over on a new one
			c = clock{m: m, t: m.now(), ok: true}
			continue
		}
		return nil, ErrQueueFull
	}
}

// setRepeats sets *req.Repeats, if asked, from the IDs push gave req's
// items: a new task's ID is first, the lowest the put gave, plus its
// place in the put; a keyed item with another ID has that of the item
// stored before under its key.
func setRepeats(req PutRequest, ids []uint64, first uint64) {
	if req.Repeats == nil {
		return
	}
	n := 0
	if !isRequestKey(req.Items[0].Key) {
		for i, id := range ids {
			if req.Items[i].Key != "" && id != first+uint64(i) {
				n++
			}
		}
	}
	*req.Repeats = n
}

// MaxDelay bounds how far ahead a task may be put (Item.Due).
const MaxDelay = 10 * 365 * 24 * time.Hour

// CheckItems reports, wrapping ErrBadArgument, the first item whose
// priority, key or due time (against now) is out of bounds. Put checks
// its items with it; so may another implementation of the queues, or a
// client front end that wants the error before it calls Put.
func CheckItems(items []Item, now time.Time) error {
	for i := range items {
		it := &items[i]
		if !it.Due.IsZero() && it.Due.Sub(now) > MaxDelay {
			return fmt.Errorf("%w: a task may be put at most %v ahead, got one due at %v", ErrBadArgument, MaxDelay, it.Due.UTC().Format(time.RFC3339))
		}
		if it.Priority < 0 || it.Priority > MaxPriority {
			return fmt.Errorf("%w: priority must be 0 to %d, got %d", ErrBadArgument, MaxPriority, it.Priority)
		}
		if len(it.Key) > MaxKeyLen {
			return fmt.Errorf("%w: an idempotency key is at most %d bytes, got %d", ErrBadArgument, MaxKeyLen, len(it.Key))
		}
		if strings.HasPrefix(it.Key, ReservedKeyPrefix) {
			return fmt.Errorf("%w: an idempotency key may not start with %q (reserved)", ErrBadArgument, ReservedKeyPrefix)
		}
	}
	return nil
}

// withdraw takes back what it can of a put whose write to the store
// failed (err), so that a refused put leaves nothing behind: its tasks
// still ready leave the queue, and their deletes follow their adds in the
// store's buffer, to be written with them or not at all. Tasks a get took
// already stay: they run, and are written once the store can write again.
// withdraw returns their ids, and an error that says which of the two
// happened. firstKey is the key of the put's first item, which for a put
// with a request ID stands for it all.
func (m *Manager) withdraw(name, firstKey string, ids []uint64, first uint64, err error) ([]uint64, error) {
	q, lerr := m.lockLive(name)
	if lerr != nil { // deleted meanwhile, and the put with it
		return nil, fmt.Errorf("%w; nothing of this put was queued", err)
	}
	// An id below first is an earlier put's task, named again by its
	// idempotency key: not this put's to take back.
	ids = slices.DeleteFunc(slices.Clone(ids), func(id uint64) bool { return id < first })
	if len(ids) == 0 {
		m.unlock(q)
		return nil, fmt.Errorf("%w; nothing of this put was queued", err)
	}
	back, out := q.remove(ids)
	if len(out) > 0 && q.delayed.len() > 0 {
		out = q.removeDelayed(out, &back)
	}
	forgotten := q.keys.forget(back) // a retry of the put must add them again
	if len(back) > 0 && isRequestKey(firstKey) && q.keys.drop(firstKey) {
		// Its first task may have been handed out, and so not forgotten
		// above: a retry that found its key would be told that all were
		// stored.
		forgotten = append(forgotten, firstKey)
	}
	q.recordDeletes(back)
	for _, key := range forgotten {
		// The store writes the put's adds, keys with them, once it can:
		// after a restart, the keys must stay forgotten there too.
		q.log.record(store.Key, Task{Key: key})
	}
	q.log.commit()
	q.puts -= uint64(len(back))
	q.settle(&clock{m: m}) // room for waiting puts
	m.unlock(q)
	if len(out) == 0 {
		return nil, fmt.Errorf("%w; nothing of this put was queued", err)
	}
	return out, fmt.Errorf("%w; %d of this put's %d tasks were handed out before the write failed: they run, and are stored once the log can write again; the rest were taken back",
		err, len(out), len(ids))
}
