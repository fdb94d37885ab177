package queue_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// fakeClock is a Config.Now that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// newManager returns a Manager closed at the end of the test.
func newManager(t testing.TB, cfg queue.Config) *queue.Manager {
	t.Helper()
	m, err := queue.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

// items makes one Item per payload string.
func items(payloads ...string) []queue.Item {
	its := make([]queue.Item, len(payloads))
	for i, p := range payloads {
		its[i] = queue.Item{Payload: []byte(p)}
	}
	return its
}

func mustPut(t testing.TB, m *queue.Manager, q string, payloads ...string) []uint64 {
	t.Helper()
	ids, err := m.Put(context.Background(), queue.PutRequest{Queue: q, Items: items(payloads...)})
	if err != nil {
		t.Fatalf("Put(%q): %v", q, err)
	}
	return ids
}

// mustGet gets without blocking (a done ctx returns whatever is ready).
func mustGet(t testing.TB, m *queue.Manager, q string, max int, owner uint64) []queue.Task {
	t.Helper()
	ts, err := m.Get(doneCtx(), queue.GetRequest{Queue: q, Max: max, Owner: owner}, nil)
	if err != nil {
		t.Fatalf("Get(%q): %v", q, err)
	}
	return ts
}

func doneCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func payloads(ts []queue.Task) []string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = string(t.Payload)
	}
	return s
}

func mustStats(t testing.TB, m *queue.Manager, q string) queue.Stats {
	t.Helper()
	s, err := m.Stats(q)
	if err != nil {
		t.Fatalf("Stats(%q): %v", q, err)
	}
	return s
}

// checkFor polls f until it returns nil or total has passed.
func checkFor(t testing.TB, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitConsumers waits until n Gets are blocked on q.
func waitConsumers(t testing.TB, m *queue.Manager, q string, n int) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		s, err := m.Stats(q)
		if err != nil {
			return err
		}
		if s.Consumers != n {
			return fmt.Errorf("%d consumers waiting on %q, want %d", s.Consumers, q, n)
		}
		return nil
	})
}

// waitProducers waits until n Puts are blocked on q.
func waitProducers(t testing.TB, m *queue.Manager, q string, n int) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		s, err := m.Stats(q)
		if err != nil {
			return err
		}
		if s.Producers != n {
			return fmt.Errorf("%d producers waiting on %q, want %d", s.Producers, q, n)
		}
		return nil
	})
}

type getResult struct {
	ts  []queue.Task
	err error
}

// goGet runs a blocking Get and returns the channel of its result.
func goGet(ctx context.Context, m *queue.Manager, q string, max int, owner uint64) <-chan getResult {
	ch := make(chan getResult, 1)
	go func() {
		ts, err := m.Get(ctx, queue.GetRequest{Queue: q, Max: max, Owner: owner}, nil)
		ch <- getResult{ts, err}
	}()
	return ch
}

func recvGet(t testing.TB, ch <-chan getResult) getResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Get did not return")
		return getResult{}
	}
}
