package queue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
)

// fillingStore is a store whose disk fills when the test says so; its
// writes are durable at once until then.
type fillingStore struct{ full atomic.Bool }

func (s *fillingStore) Load() (store.Meta, []store.Task, error) { return store.Meta{}, nil, nil }
func (s *fillingStore) Append(...store.Op) store.Ticket         { return 0 }
func (s *fillingStore) Wait(store.Ticket) error                 { return nil }
func (s *fillingStore) SetDumper(store.Dumper)                  {}
func (s *fillingStore) Close() error                            { return nil }
func (s *fillingStore) Writable() error {
	if s.full.Load() {
		return store.ErrDiskFull
	}
	return nil
}

// On a full disk an operator's change is refused and changes nothing: in
// memory alone, a crash would undo it.
func TestOperatorsChangesOnAFullDisk(t *testing.T) {
	st := &fillingStore{}
	m := newManager(t, queue.Config{Store: st, MaxAttempts: 1})
	ids, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{{Payload: []byte("1")}, {Payload: []byte("2")}}})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := m.Get(queue.NoWait, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil)
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	st.full.Store(true)
	for name, change := range map[string]func() error{
		"purge":   func() error { _, err := m.Purge("q"); return err },
		"delete":  func() error { return m.Delete("q") },
		"drop":    func() error { _, err := m.Drop("q.dead", []uint64{ids[0]}); return err },
		"requeue": func() error { _, err := m.Requeue("q", []uint64{ids[0]}); return err },
		"run-now": func() error { _, err := m.RunNow("q", []uint64{ids[1]}); return err },
	} {
		if err := change(); !errors.Is(err, store.ErrDiskFull) {
			t.Errorf("%s on a full disk: %v, want %v", name, err, store.ErrDiskFull)
		}
	}
	st.full.Store(false)
	if s, err := m.Stats("q"); err != nil || s.Ready != 1 || s.Dead != 1 {
		t.Fatalf("stats %+v, %v; want the ready task and the dead one as they were", s, err)
	}
}

// On a full disk a completion's results are taken, as its acks are: the
// log writes them, with the acks, once it can. Refused, the tasks' acks
// would not be appended either, and the tasks, gone from memory, would
// come back only at a restart.
func TestResultsTakenOnAFullDisk(t *testing.T) {
	st := &fillingStore{}
	m := newManager(t, queue.Config{Store: st})
	mustPut(t, m, "q", "job")
	ts := mustGet(t, m, "q", 1, 1)
	st.full.Store(true)
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: items("more")}); !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("put of a task on a full disk: %v, want %v", err, store.ErrDiskFull)
	}
	_, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[0].ID}, Publish: func(acked []queue.Task) ([]queue.Task, error) {
		_, err := m.Put(context.Background(), queue.PutRequest{Queue: "results", Items: items("its result"), Results: true,
			ResultsOf: queue.ResultsOf{Queue: "q", Tasks: acked}})
		return nil, err
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := m.Stats("results"); err != nil || s.Ready != 1 {
		t.Fatalf("results: %+v, %v; want the result queued", s, err)
	}
}
