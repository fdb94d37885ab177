package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
)

// unwrittenStore is a store whose disk writes nothing before the crash
// the test makes: every append waits, and a restart loads only the IDs
// reserved (which are durable when ReserveIDs returns).
type unwrittenStore struct {
	written  chan struct{} // closed at cleanup: the waits end
	mu       sync.Mutex
	reserved uint64
}

func (s *unwrittenStore) Load() (store.Meta, []store.Task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return store.Meta{MaxID: s.reserved}, nil, nil
}
func (s *unwrittenStore) Append(...store.Op) store.Ticket { return 1 }
func (s *unwrittenStore) Wait(store.Ticket) error         { <-s.written; return nil }
func (s *unwrittenStore) Writable() error                 { return nil }
func (s *unwrittenStore) SetDumper(store.Dumper)          {}
func (s *unwrittenStore) Close() error                    { return nil }
func (s *unwrittenStore) ReserveIDs(upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved = max(s.reserved, upTo)
	return nil
}

// A get may take a task before its put is durable (docs/STORAGE.md). A
// crash that loses the put must not let the restarted master give that
// task's ID to another: a client would see one ID name two tasks.
func TestIDSeenBeforeACrashIsNotGivenAgain(t *testing.T) {
	st := &unwrittenStore{written: make(chan struct{})}
	before := newManager(t, queue.Config{Store: st})
	t.Cleanup(func() { close(st.written) }) // before the manager's Close
	go func() { _, _ = before.Put(context.Background(), queue.PutRequest{Queue: "q", Items: items("a")}) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seen, err := before.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, NoAck: true}, nil)
	if err != nil || len(seen) != 1 {
		t.Fatalf("get before the put is durable: %v, %v", seen, err)
	}
	// The crash: the restarted master loads what the store kept.
	after := newManager(t, queue.Config{Store: &unwrittenStore{written: st.written, reserved: st.reserved}})
	go func() { _, _ = after.Put(context.Background(), queue.PutRequest{Queue: "q", Items: items("b")}) }()
	got, err := after.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, NoAck: true}, nil)
	if err != nil || len(got) != 1 {
		t.Fatalf("get after the restart: %v, %v", got, err)
	}
	if got[0].ID <= seen[0].ID {
		t.Fatalf("after the crash task %q got ID %d; %q, taken before it, had %d", got[0].Payload, got[0].ID, seen[0].Payload, seen[0].ID)
	}
}

// reservingStore is a store whose writes are durable at once, keeping
// the IDs reserved; refusing refuses reservations, as a full disk would.
type reservingStore struct {
	fillingStore
	refusing atomic.Bool
	mu       sync.Mutex
	reserved uint64
	calls    int
}

func (s *reservingStore) ReserveIDs(upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.refusing.Load() {
		return store.ErrDiskFull
	}
	s.reserved = max(s.reserved, upTo)
	return nil
}

func (s *reservingStore) bound() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserved
}

// Every ID a get sees was reserved before, through puts on several queues
// at once that run through several blocks of reservations.
func TestIDsHandedOutAreReserved(t *testing.T) {
	queue.SetIDBlock(t, 1<<12)
	st := &reservingStore{}
	m := newManager(t, queue.Config{Store: st})
	const puts, batch = 300, 100 // 30,000 IDs: through several blocks
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			its := make([]queue.Item, batch)
			for i := range its {
				its[i].Payload = []byte{byte(w)}
			}
			name := fmt.Sprint("q", w)
			for range puts / 4 {
				if _, err := m.Put(context.Background(), queue.PutRequest{Queue: name, Items: its}); err != nil {
					t.Error(err)
					return
				}
				ts, err := m.Get(queue.NoWait, queue.GetRequest{Queue: name, Max: batch, NoAck: true}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				bound := st.bound()
				for _, task := range ts {
					if task.ID > bound {
						t.Errorf("task %d handed out; reserved up to %d", task.ID, bound)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// A put of tasks whose IDs the store cannot reserve (a full disk) is
// refused and changes nothing; a put of results is taken; and the store is
// not asked again at every put.
func TestPutRefusedWhenIDsCannotBeReserved(t *testing.T) {
	queue.SetIDBlock(t, 1000)
	st := &reservingStore{}
	m := newManager(t, queue.Config{Store: st})
	st.refusing.Store(true) // the disk fills, but for the log
	its := make([]queue.Item, 600)
	for i := range its {
		its[i].Payload = []byte("x")
	}
	for range 2 { // within the first block, then past its half
		if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: its}); err != nil && !errors.Is(err, store.ErrDiskFull) {
			t.Fatal(err)
		}
	}
	if s, err := m.Stats("q"); err != nil || s.Ready != len(its) {
		t.Fatalf("q: %+v, %v; want the first put's tasks only", s, err)
	}
	calls := st.calls
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: its[:500]}); !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("a put past the reserved IDs: %v, want %v", err, store.ErrDiskFull)
	}
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "results", Items: its[:1], Results: true}); err != nil {
		t.Fatalf("a put of results: %v", err)
	}
	if st.calls != calls {
		t.Fatalf("the store was asked %d times more within a second of a failed reservation", st.calls-calls)
	}
}

// A put that waited for room, and is served once other puts have taken
// the IDs reserved, is refused when its own cannot be reserved: served
// with IDs above the bound, a get could see one a crash would give again.
func TestWaitingPutRefusedPastTheReservedIDs(t *testing.T) {
	queue.SetIDBlock(t, 1000) // reserved up to 1000 as it loads
	st := &reservingStore{}
	m := newManager(t, queue.Config{Store: st, MaxLen: 400})
	st.refusing.Store(true)
	putN := func(name string, n int) {
		t.Helper()
		if _, err := m.Put(context.Background(), queue.PutRequest{Queue: name, Items: make([]queue.Item, n)}); err != nil {
			t.Fatalf("put of %d into %s: %v", n, name, err)
		}
	}
	putN("a", 300)
	putN("w", 400) // w is full
	waited := make(chan error, 1)
	go func() {
		_, err := m.Put(context.Background(), queue.PutRequest{Queue: "w", Items: make([]queue.Item, 100)})
		waited <- err
	}()
	qmtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if s, err := m.Stats("w"); err != nil || s.Producers != 1 {
			return fmt.Errorf("w: %+v, %v; want a put waiting", s, err)
		}
		return nil
	})
	putN("a", 100)
	putN("b", 200) // IDs up to 1000: all reserved
	if _, err := m.Get(queue.NoWait, queue.GetRequest{Queue: "w", Max: 100, NoAck: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("the waiting put served past the reserved IDs: %v, want %v", err, store.ErrDiskFull)
	}
	if s, err := m.Stats("w"); err != nil || s.Ready != 300 {
		t.Fatalf("w: %+v, %v; want the 300 left, nothing of the refused put", s, err)
	}
}
