package queue

import (
	"context"
	"errors"
	"testing"
	"time"
)

// setHook sets testHookWoken for one test.
func setHook(t *testing.T, f func()) {
	t.Helper()
	testHookWoken = f
	t.Cleanup(func() { testHookWoken = nil })
}

func newTestManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// waitFor polls until cond holds under q's lock.
func waitFor(t *testing.T, m *Manager, name string, cond func(q *queue) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if q := m.lookup(name); q != nil {
			q.mu.Lock()
			ok := cond(q)
			q.mu.Unlock()
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// Tasks handed to a Get whose ctx has just ended go to the next waiting
// Get, or back to the front, with Attempts and counters untouched.
func TestHandoffAfterCancel(t *testing.T) {
	for _, tt := range []struct {
		name       string
		noAck      bool
		nextWaiter bool
	}{
		{"lease, back to front", false, false},
		{"lease, next waiter", false, true},
		{"noAck, back to front", true, false},
		{"noAck, next waiter", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestManager(t, Config{})
			ctx := context.Background()
			if _, err := m.Put(ctx, PutRequest{Queue: "q", Items: []Item{{Payload: []byte("ahead")}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Get(ctx, GetRequest{Queue: "q", Max: 1, Owner: 9, NoAck: true}, nil); err != nil { // make it empty
				t.Fatal(err)
			}
			var ids []uint64
			setHook(t, func() {
				// The first Get has been woken by its ctx but has not
				// yet locked the queue: it is still first in line.
				var err error
				if ids, err = m.Put(ctx, PutRequest{Queue: "q", Items: []Item{{Payload: []byte("a")}, {Payload: []byte("b")}}}); err != nil {
					t.Error(err)
				}
			})
			gctx, cancel := context.WithCancel(ctx)
			first := make(chan []Task, 1)
			go func() {
				ts, err := m.Get(gctx, GetRequest{Queue: "q", Max: 5, Owner: 1, NoAck: tt.noAck}, nil)
				if err != nil {
					t.Error(err)
				}
				first <- ts
			}()
			waitFor(t, m, "q", func(q *queue) bool { return q.getters.n == 1 })
			second := make(chan []Task, 1)
			if tt.nextWaiter {
				go func() {
					ts, err := m.Get(ctx, GetRequest{Queue: "q", Max: 5, Owner: 2, NoAck: tt.noAck}, nil)
					if err != nil {
						t.Error(err)
					}
					second <- ts
				}()
				waitFor(t, m, "q", func(q *queue) bool { return q.getters.n == 2 })
			}
			cancel()
			if ts := <-first; ts != nil {
				t.Fatalf("cancelled Get returned %+v", ts)
			}
			var ts []Task
			if tt.nextWaiter {
				ts = <-second
			} else {
				var err error
				if ts, err = m.Get(ctx, GetRequest{Queue: "q", Max: 5, Owner: 2, NoAck: tt.noAck}, nil); err != nil {
					t.Fatal(err)
				}
			}
			if len(ts) != 2 || ts[0].ID != ids[0] || ts[1].ID != ids[1] || ts[0].Attempts != 1 || ts[1].Attempts != 1 {
				t.Fatalf("tasks after the give-back: %+v (ids %v)", ts, ids)
			}
			s, _ := m.Stats("q")
			wantLeased, wantDone := 2, uint64(1)
			if tt.noAck {
				wantLeased, wantDone = 0, 3
			}
			if s.Gets != 3 || s.Leased != wantLeased || s.Done != wantDone || s.Ready != 0 || s.Consumers != 0 {
				t.Fatalf("stats %+v", s)
			}
			if n := m.LeasedBy(1); n != 0 {
				t.Fatalf("cancelled getter still holds %d leases", n)
			}
			if err := m.CheckInvariants(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A Put whose ctx ends just as room is made for it has succeeded.
func TestPutServedAfterCancel(t *testing.T) {
	m := newTestManager(t, Config{MaxLen: 1})
	ctx := context.Background()
	if _, err := m.Put(ctx, PutRequest{Queue: "q", Items: []Item{{Payload: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	setHook(t, func() {
		if _, err := m.Get(ctx, GetRequest{Queue: "q", Max: 1, Owner: 1, NoAck: true}, nil); err != nil {
			t.Error(err)
		}
	})
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var ids []uint64
	go func() {
		var err error
		ids, err = m.Put(pctx, PutRequest{Queue: "q", Items: []Item{{Payload: []byte("b")}}})
		done <- err
	}()
	waitFor(t, m, "q", func(q *queue) bool { return q.putters.n == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Put served as its ctx ended = %v", err)
	}
	ts, _ := m.Get(ctx, GetRequest{Queue: "q", Max: 1, Owner: 1, NoAck: true}, nil)
	if len(ts) != 1 || ts[0].ID != ids[0] {
		t.Fatalf("queue holds %+v, want task %v", ts, ids)
	}
}

// A Get served just as the Manager closes keeps its tasks; one not served
// gets ErrClosed.
func TestGetAtClose(t *testing.T) {
	for _, served := range []bool{true, false} {
		t.Run(map[bool]string{true: "served", false: "not served"}[served], func(t *testing.T) {
			m := newTestManager(t, Config{})
			ctx := context.Background()
			setHook(t, func() {
				if !served {
					return
				}
				// Put refuses after Close; hand a task over as a Put
				// that got the lock just before Close would have.
				q := m.lookup("q")
				q.mu.Lock()
				_, _, _, _ = q.push([]Item{{Payload: []byte("a")}}, nil, false, &clock{m: m})
				q.settle(&clock{m: m})
				q.mu.Unlock()
			})
			type result struct {
				ts  []Task
				err error
			}
			res := make(chan result, 1)
			go func() {
				ts, err := m.Get(ctx, GetRequest{Queue: "q", Max: 1, Owner: 1}, nil)
				res <- result{ts, err}
			}()
			waitFor(t, m, "q", func(q *queue) bool { return q.getters.n == 1 })
			m.Close()
			r := <-res
			if served && (r.err != nil || len(r.ts) != 1) {
				t.Fatalf("served Get = %+v, %v; want the task", r.ts, r.err)
			}
			if !served && (!errors.Is(r.err, ErrClosed) || r.ts != nil) {
				t.Fatalf("Get = %+v, %v; want ErrClosed", r.ts, r.err)
			}
		})
	}
}
