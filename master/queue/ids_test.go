package queue_test

import (
	"context"
	"sync"
	"testing"
	"time"

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
