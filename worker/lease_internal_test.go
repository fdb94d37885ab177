package worker

import (
	"context"
	"errors"
	"testing"
	"time"
)

// testLease is a lease on a session that has no connection: enough for
// the lease's context.
func testLease(t *testing.T) (*session, *lease) {
	ctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	s := &session{ctx: ctx, cancel: cancel, leases: make(map[uint64]*lease), kick: make(chan struct{}, 1)}
	return s, trackOne(s, Task{ID: 1})
}

// trackOne tracks t alone on s.
func trackOne(s *session, t Task) *lease {
	return &s.track([]Task{t}, time.Now())[0]
}

func isDone(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// The handler's context behaves the same whether the handler first looks
// at it before or after its lease ends.
func TestLeaseContext(t *testing.T) {
	for _, tc := range []struct {
		name      string
		end       func(s *session, l *lease)
		wantCause error
		wantLost  bool
	}{
		{"lease lost", func(_ *session, l *lease) { l.end(ErrLeaseLost) }, ErrLeaseLost, true},
		{"session ended", func(s *session, _ *lease) { s.cancel(ErrLeaseLost) }, ErrLeaseLost, true},
		{"completed", func(_ *session, l *lease) { l.end(nil) }, context.Canceled, false},
	} {
		for _, usedFirst := range []bool{false, true} {
			name := tc.name + "/untouched"
			if usedFirst {
				name = tc.name + "/in use"
			}
			t.Run(name, func(t *testing.T) {
				s, l := testLease(t)
				var child context.Context
				if usedFirst {
					if l.Err() != nil || isDone(l) {
						t.Fatal("the context of a held lease is done")
					}
					var cancel context.CancelFunc
					child, cancel = context.WithTimeout(l, time.Hour)
					defer cancel()
				}
				if l.lost() {
					t.Fatal("lost() before the lease ended")
				}
				tc.end(s, l)
				if !isDone(l) || !errors.Is(l.Err(), context.Canceled) {
					t.Fatalf("after the end: done %v, Err %v", isDone(l), l.Err())
				}
				if got := context.Cause(l); !errors.Is(got, tc.wantCause) {
					t.Errorf("Cause = %v, want %v", got, tc.wantCause)
				}
				if got := l.lost(); got != tc.wantLost {
					t.Errorf("lost() = %v, want %v", got, tc.wantLost)
				}
				if child != nil && !isDone(child) {
					t.Error("a context derived from the lease's was not cancelled with it")
				}
			})
		}
	}
}

// A second end keeps the first cause, as a context's cancel does.
func TestLeaseEndKeepsFirstCause(t *testing.T) {
	_, l := testLease(t)
	l.end(ErrLeaseLost)
	l.end(nil)
	if got := context.Cause(l); !errors.Is(got, ErrLeaseLost) {
		t.Fatalf("Cause = %v, want ErrLeaseLost", got)
	}
}

// The leases of one get are each their own: each task's in the session's
// map, ended alone, and one due for renewal before the keeper's next look
// wakes it, wherever it is in the get.
func TestTrackGetsLeases(t *testing.T) {
	s, first := testLease(t)
	s.wakeAt = time.Now().Add(time.Hour)
	tasks := []Task{{ID: 2, Lease: 3 * time.Hour}, {ID: 3, Attempt: 2, Lease: 3 * time.Hour}, {ID: 4, Lease: time.Minute, Token: "#4"}}
	ls := s.track(tasks, time.Now())
	for i, task := range tasks {
		l := &ls[i]
		if s.leases[task.ID] != l || l.id != task.ID || l.attempt != task.Attempt || l.length != task.Lease || l.handover != (task.Token != "") || l.token != task.Token {
			t.Errorf("task %d: lease %+v, in the map %p; want its own, %p", task.ID, l, s.leases[task.ID], l)
		}
	}
	select {
	case <-s.kick:
	default:
		t.Error("a lease due within the keeper's wait did not wake it")
	}
	ls[1].end(ErrLeaseLost)
	if !ls[1].lost() || ls[0].lost() || ls[2].lost() || first.lost() {
		t.Error("ending one lease of a get ended another")
	}
	ls[2].completing = true
	if got := s.giveUp(ErrDrainTimeout); len(got) != 3 || got[0] != first || got[1] != &ls[0] || got[2] != &ls[1] {
		t.Errorf("gave up %v; want the first lease and the get's two not completing", got)
	}
	s.wakeAt = time.Now().Add(time.Hour)
	s.track([]Task{{ID: 5, Lease: 3 * time.Hour}, {ID: 6, Lease: 3 * time.Hour}}, time.Now())
	select {
	case <-s.kick:
		t.Error("leases due after the keeper's next look woke it")
	default:
	}
}

// A timed-out drain gives up only the tasks whose handlers have not
// returned: an outcome on its way, sent or not yet taken by the sender
// (whose batches of maxBatch are marked completing one at a time), is
// left to be sent, so that a task done in time is not run again.
func TestGiveUpLeavesReturnedHandlers(t *testing.T) {
	s, running := testLease(t)
	returned := trackOne(s, Task{ID: 2})
	returned.returned.Store(true)
	sending := trackOne(s, Task{ID: 3})
	sending.completing = true
	waiting := trackOne(s, Task{ID: 4, Attempt: 2})
	got := s.giveUp(ErrDrainTimeout)
	if len(got) != 2 || got[0] != running || got[1] != waiting || got[1].attempt != 2 {
		t.Fatalf("gave up %v; want the running and the waiting tasks' leases, in task order", got)
	}
	if !errors.Is(context.Cause(running), ErrDrainTimeout) || !running.lost() {
		t.Errorf("the running handler's ctx: %v; want ErrDrainTimeout, a lost lease", context.Cause(running))
	}
	if isDone(returned) || isDone(sending) {
		t.Error("a returned handler's or a sent outcome's lease was ended")
	}
	if len(s.leases) != 2 {
		t.Errorf("%d leases left; want the two whose outcomes are on their way", len(s.leases))
	}
}

// A task's end is passed on as the next task's start only when nothing
// slow came between: a failure's log line may take long (a full pipe).
func TestRunTaskPassesItsEndOnlyWithoutALogLine(t *testing.T) {
	for _, tt := range []struct {
		name    string
		handler Handler
		passes  bool
	}{
		{"done", func(context.Context, Task) (any, error) { return 1, nil }, true},
		{"failed", func(context.Context, Task) (any, error) { return nil, errors.New("no") }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Server: "127.0.0.1:1", Authkey: []byte("k"), Tasks: "tasks", Name: "w", Handler: tt.handler}
			cfg.setDefaults()
			r := newRunner(context.Background(), cfg)
			t.Cleanup(func() { r.pool.stop(); r.res.stop() })
			s, _ := testLease(t)
			s.r, s.maxValue = r, 1<<20
			l := trackOne(s, Task{ID: 2})
			start := time.Now()
			end := r.runTask(job{s: s, l: l, t: Task{ID: 2}}, start)
			if tt.passes != !end.IsZero() || tt.passes && end.Before(start) {
				t.Errorf("runTask returned %v (started %v); want an end passed on: %v", end, start, tt.passes)
			}
		})
	}
}
