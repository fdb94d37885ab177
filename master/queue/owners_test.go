package queue

import (
	"context"
	"testing"
)

// Owners that held a lease are remembered only while the set of idle ones
// stays small: many short-lived owners do not grow the map for good.
func TestIdleOwnersSwept(t *testing.T) {
	m := newTestManager(t, Config{})
	ctx := context.Background()
	for owner := uint64(1); owner <= 5000; owner++ {
		if _, err := m.Put(ctx, PutRequest{Queue: "q", Items: []Item{{Payload: []byte("x")}}}); err != nil {
			t.Fatal(err)
		}
		ts, err := m.Get(ctx, GetRequest{Queue: "q", Max: 1, Owner: owner}, nil)
		if err != nil || len(ts) != 1 {
			t.Fatal(ts, err)
		}
		if _, err := m.Ack(AckRequest{Queue: "q", Owner: owner, IDs: []uint64{ts[0].ID}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	q := m.lookup("q")
	q.mu.Lock()
	n := len(q.owners)
	q.mu.Unlock()
	if n > 2*maxIdleOwners+1 {
		t.Fatalf("%d owners remembered after 5000 came and went", n)
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	// Release forgets the owner entirely.
	if _, err := m.Put(ctx, PutRequest{Queue: "q", Items: []Item{{Payload: []byte("x")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, GetRequest{Queue: "q", Max: 1, Owner: 99999}, nil); err != nil {
		t.Fatal(err)
	}
	m.Release(99999)
	q.mu.Lock()
	_, ok := q.owners[99999]
	q.mu.Unlock()
	if ok {
		t.Fatal("released owner still remembered")
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
