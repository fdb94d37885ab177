package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// A delayed put is handed out once due, not before, with the IDs its put
// returned; meanwhile it is counted and listed as delayed, not ready.
func TestDelayedPut(t *testing.T) {
	for _, pack := range []int{1, 8} {
		q := newQueues(t, startNode(t), jsqueue.Config{Pack: pack})
		reaping(t, q)
		ctx := context.Background()
		put(t, q, "jobs", "first") // a stream made before any delayed put
		due := time.Now().Add(time.Second)
		late := []queue.Item{{Payload: []byte("late-1"), Due: due}, {Payload: []byte("late-2"), Due: due, ReplyTo: "mine"}}
		ids, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: late})
		if err != nil || len(ids) != 2 || ids[0] == ids[1] {
			t.Fatalf("pack %d: delayed put: %v, %v", pack, ids, err)
		}
		put(t, q, "jobs", "now")
		// JetStream acks a put before its consumer counts the message, and
		// the stats take as delayed what the consumer does not count yet.
		for deadline := time.Now().Add(500 * time.Millisecond); ; {
			st, err := q.Stats("jobs")
			if err == nil && st.Delayed == 2 && st.Ready == 2 && st.Puts == 4 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pack %d: stats before due: %+v, %v; want 2 delayed, 2 ready, 4 puts", pack, st, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if ts, err := q.PeekDelayed("jobs", 10); err != nil || !slices.Equal(payloads(ts), []string{"late-1", "late-2"}) || ts[0].ID != ids[0] || !ts[0].Due.Equal(due) {
			t.Fatalf("pack %d: peek delayed: %+v, %v", pack, ts, err)
		}
		if ts, err := q.Peek("jobs", 10); err != nil || !slices.Equal(payloads(ts), []string{"first", "now"}) {
			t.Fatalf("pack %d: peek: %v, %v; want the two ready ones", pack, payloads(ts), err)
		}
		if ts := get(t, q, "jobs", 1, 10, time.Minute, 200*time.Millisecond); !slices.Equal(payloads(ts), []string{"first", "now"}) {
			t.Fatalf("pack %d: before due: got %v; want the two ready ones", pack, payloads(ts))
		}
		var got []queue.Task
		for len(got) < 2 {
			ts := get(t, q, "jobs", 1, 10, time.Minute, 5*time.Second)
			if len(ts) == 0 {
				t.Fatalf("pack %d: the delayed tasks did not come within 5s of their time", pack)
			}
			if now := time.Now(); now.Before(due) {
				t.Fatalf("pack %d: handed out at %v, before their time %v", pack, now, due)
			}
			got = append(got, ts...)
		}
		if !slices.Equal(payloads(got), []string{"late-1", "late-2"}) || got[0].ID != ids[0] || got[1].ID != ids[1] ||
			got[1].ReplyTo != "mine" || got[0].Attempts != 1 || got[0].Enqueued.After(due.Add(-500*time.Millisecond)) {
			t.Fatalf("pack %d: delayed tasks as handed out: %+v; want IDs %v, attempt 1, reply-to kept, enqueued at the put", pack, got, ids)
		}
		if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); err != nil {
			t.Fatalf("pack %d: ack: %v", pack, err)
		}
		// Each delayed task was stored twice, as its schedule and as the
		// task; the gateway that hands it out counts it off (within
		// countsEvery).
		qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			st, err := q.Stats("jobs")
			if err != nil || st.Delayed != 0 || st.Leased != 2 || st.Puts != 4 || st.Done != 2 {
				return fmt.Errorf("pack %d: stats after: %+v, %v; want none delayed, the first two leased, 4 puts, 2 done", pack, st, err)
			}
			return nil
		})
	}
}

// A repeated delayed put with keys is stored once and gets the first
// one's IDs; a delayed task can be dropped before it is due.
func TestDelayedPutRepeatedAndDropped(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	ctx := context.Background()
	items := []queue.Item{{Payload: []byte("a"), Key: "k1", Due: time.Now().Add(time.Hour)}, {Payload: []byte("b"), Key: "k2", Due: time.Now().Add(time.Hour)}}
	first, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: items})
	if err != nil {
		t.Fatal(err)
	}
	again, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: items})
	if err != nil || !slices.Equal(again, first) {
		t.Fatalf("repeat: %v, %v; want the first IDs %v", again, err, first)
	}
	if st, err := q.Stats("jobs"); err != nil || st.Delayed != 2 || st.Puts != 2 {
		t.Fatalf("stats: %+v, %v; want 2 delayed, 2 puts", st, err)
	}
	if n, err := q.Drop("jobs", first[:1]); err != nil || n != 1 {
		t.Fatalf("drop of a delayed task: %d, %v", n, err)
	}
	if ts, err := q.PeekDelayed("jobs", 10); err != nil || !slices.Equal(payloads(ts), []string{"b"}) {
		t.Fatalf("after the drop: %v, %v; want b", payloads(ts), err)
	}
	if st, err := q.Stats("jobs"); err != nil || st.Delayed != 1 || st.Puts != 2 || st.Done != 1 || st.Ready != 0 {
		t.Fatalf("stats after the drop: %+v, %v; want 1 delayed, 2 puts, 1 done", st, err)
	}
}

// TestKeyRepeatedWithAnotherDelay: a key put once with a delay and again
// without one, or the other way round, stores one task, and both puts
// answer its ID, as a single master does. Before, the first answered the
// delayed task's schedule's sequence, no task's ID, and the second failed
// saying the delayed put's tasks were due already.
func TestKeyRepeatedWithAnotherDelay(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	ctx := context.Background()
	putKey := func(key string, due time.Time) uint64 {
		t.Helper()
		ids, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: []byte(key), Key: key, Due: due}}})
		if err != nil || len(ids) != 1 {
			t.Fatalf("put of key %s: %v, %v", key, ids, err)
		}
		return ids[0]
	}
	later := time.Now().Add(time.Hour)
	if delayed, plain := putKey("d", later), putKey("d", time.Time{}); plain != delayed {
		t.Errorf("key d put with a delay, then without: IDs %d and %d, want the first twice", delayed, plain)
	}
	if plain, delayed := putKey("p", time.Time{}), putKey("p", later); delayed != plain {
		t.Errorf("key p put without a delay, then with: IDs %d and %d, want the first twice", plain, delayed)
	}
	// The figures read the stream's state, then its consumer's, which
	// may count a message just stored a moment later (admin.go): waited
	// for, as the test asks about the tasks stored, not that moment.
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st, err := q.Stats("jobs"); err != nil || st.Delayed != 1 || st.Ready != 1 {
			return fmt.Errorf("stats: %+v, %v; want one task of each key", st, err)
		}
		return nil
	})
}

// A gateway's default retry backoff (qmaster --retry-backoff) holds a
// failed task back before its next delivery, packed or not; a worker's
// retry-after overrides it.
func TestRetryBackoff(t *testing.T) {
	const wait = 400 * time.Millisecond
	for _, pack := range []int{1, 8} {
		q := newQueues(t, startNode(t), jsqueue.Config{Pack: pack, RetryBackoffMin: wait, RetryBackoffMax: wait})
		reaping(t, q)
		put(t, q, "jobs", "a", "b")
		ts := get(t, q, "jobs", 1, 2, time.Minute, time.Second)
		if len(ts) != 2 {
			t.Fatalf("pack %d: got %d tasks", pack, len(ts))
		}
		failed := time.Now()
		if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
			t.Fatal(err)
		}
		if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[1].ID, Error: "boom", RetryAfter: time.Hour}); err != nil {
			t.Fatal(err)
		}
		again := get(t, q, "jobs", 1, 2, time.Minute, 3*time.Second)
		// The backoff is drawn from the upper half of its length.
		if took := time.Since(failed); len(again) != 1 || again[0].ID != ts[0].ID || took < wait/2 {
			t.Fatalf("pack %d: after a failure: %v after %v; want task %d back after at least %v", pack, payloads(again), took, ts[0].ID, wait/2)
		}
		if again[0].Attempts != 2 || again[0].LastError != "boom" {
			t.Fatalf("pack %d: the retried task: %+v", pack, again[0])
		}
	}
}

// A queue's retry policy set through one gateway holds for another: its
// max attempts and its backoff. The zero policy goes back to the defaults.
func TestRetryPolicyHoldsForEveryGateway(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{MaxAttempts: 5})
	b := newQueues(t, node, jsqueue.Config{MaxAttempts: 5})
	reaping(t, b)
	const wait = 300 * time.Millisecond
	if err := a.SetPolicy("jobs", queue.Policy{MaxAttempts: 2, BackoffMin: wait, BackoffMax: wait}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPolicy("jobs.dead", queue.Policy{MaxAttempts: 2}); !errors.Is(err, queue.ErrBadArgument) {
		t.Errorf("policy of a dead-letter queue: %v, want ErrBadArgument", err)
	}
	policyIs := func(want queue.Policy) func() error {
		return func() error {
			st, err := b.Stats("jobs")
			if err != nil || st.Policy != want {
				return fmt.Errorf("policy through the other gateway: %+v, %v; want %+v", st.Policy, err, want)
			}
			return nil
		}
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, policyIs(queue.Policy{MaxAttempts: 2, BackoffMin: wait, BackoffMax: wait}))
	put(t, b, "jobs", "x")
	ts := get(t, b, "jobs", 1, 1, time.Minute, 3*time.Second)
	failed := time.Now()
	if err := b.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	again := get(t, b, "jobs", 1, 1, time.Minute, 3*time.Second)
	if took := time.Since(failed); len(again) != 1 || again[0].Attempts != 2 || took < wait/2 {
		t.Fatalf("after the first failure: %+v after %v; want attempt 2 after its backoff", again, took)
	}
	if err := b.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: again[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	// Two attempts of two: dead, where the gateways' default (5) would
	// have given it three more.
	if st, err := b.Stats(queue.DeadLetterName("jobs")); err != nil || st.Ready != 1 {
		t.Fatalf("dead letters after two failures: %+v, %v; want the task", st, err)
	}
	if err := a.SetPolicy("jobs", queue.Policy{}); err != nil {
		t.Fatal(err)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, policyIs(queue.Policy{MaxAttempts: 5}))
}

// Run-now makes delayed tasks due at once, by ID or all of them; a task
// not delayed is reported, and a task made due is handed out once.
func TestRunNow(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	reaping(t, q)
	ctx := context.Background()
	later := time.Now().Add(time.Hour)
	items := []queue.Item{{Payload: []byte("a"), Due: later, Key: "ka"}, {Payload: []byte("b"), Due: later}, {Payload: []byte("c"), Due: later}}
	ids, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: items})
	if err != nil {
		t.Fatal(err)
	}
	ready := put(t, q, "jobs", "ready")
	n, err := q.RunNow("jobs", []uint64{ids[1], ready[0]})
	var te *queue.TaskError
	if n != 1 || !errors.As(err, &te) || te.ID != ready[0] || !errors.Is(err, queue.ErrNoSuchTask) {
		t.Fatalf("run-now of b and a ready task: %d, %v; want 1 moved and the ready one reported", n, err)
	}
	// Until JetStream publishes it, b is listed as delayed, due now.
	ts, err := q.PeekDelayed("jobs", 10)
	ts = slices.DeleteFunc(ts, func(t queue.Task) bool { return t.Due.Before(later) })
	if err != nil || !slices.Equal(payloads(ts), []string{"a", "c"}) {
		t.Fatalf("delayed after run-now of b: %v, %v; want a and c still due later", payloads(ts), err)
	}
	var got []queue.Task
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		got = append(got, get(t, q, "jobs", 1, 10, time.Minute, time.Second)...)
	}
	if !slices.Equal(payloads(got), []string{"ready", "b"}) || got[1].ID != ids[1] || got[1].Attempts != 1 {
		t.Fatalf("handed out: %+v; want ready, then b under ID %d", got, ids[1])
	}
	if n, err := q.RunNow("jobs", ids[1:2]); n != 0 || !errors.Is(err, queue.ErrNoSuchTask) {
		t.Fatalf("run-now of b again: %d, %v; want it reported as not delayed", n, err)
	}
	if n, err := q.RunNow("jobs", nil); n != 2 || err != nil {
		t.Fatalf("run-now of all: %d, %v; want 2", n, err)
	}
	got = got[:0]
	deadline = time.Now().Add(5 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		got = append(got, get(t, q, "jobs", 1, 10, time.Minute, time.Second)...)
	}
	if !slices.Equal(payloads(got), []string{"a", "c"}) || got[0].ID != ids[0] || got[1].ID != ids[2] {
		t.Fatalf("handed out after run-now of all: %+v; want a and c under IDs %v", got, []uint64{ids[0], ids[2]})
	}
	// The key of a is still the put's: a repeat is refused, not stored.
	if again, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: items[:1]}); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("repeat of a's put after it ran: %v, %v; want it refused as due already", again, err)
	}
	if ts := get(t, q, "jobs", 1, 10, time.Minute, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("a task handed out twice: %+v", ts)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st, err := q.Stats("jobs")
		if err != nil || st.Delayed != 0 || st.Leased != 4 || st.Puts != 4 || st.Done != 0 {
			return fmt.Errorf("stats: %+v, %v; want none delayed, 4 leased, 4 puts, none done", st, err)
		}
		return nil
	})
}

// A gateway that made queues take delayed tasks and priorities takes them
// again after another gateway deleted the queues and made them anew,
// without them: whether JetStream's advisories of the deletions reach it
// or not. JetStream can drop such an advisory (the deleted stream's loop
// may quit before sending it): a CI run under load once waited 20 s for
// one in vain. Without it, a's puts of delayed tasks and of priorities
// waited out the request timeout for a stream that took their subjects,
// and failed. Each kind has a queue of its own, so that neither's put
// opens the other's queue anew.
func TestDelayedPutAfterTheQueueIsMadeAnew(t *testing.T) {
	later := []queue.Item{{Payload: []byte("later"), Due: time.Now().Add(time.Hour)}}
	urgent := []queue.Item{{Payload: []byte("urgent-1"), Priority: 3}, {Payload: []byte("urgent-2"), Priority: 5}}
	puts := []queue.PutRequest{{Queue: "jobs", Items: later}, {Queue: "rush", Items: urgent}}
	for _, advisories := range []bool{true, false} {
		t.Run(fmt.Sprintf("advisories %v", advisories), func(t *testing.T) {
			node := startNode(t)
			a := newQueues(t, node, jsqueue.Config{RequestTimeout: 2 * time.Second})
			b := newQueues(t, node, jsqueue.Config{})
			if !advisories {
				a.IgnoreAdvisories()
			}
			ctx := context.Background()
			for _, req := range puts {
				if _, err := a.Put(ctx, req); err != nil {
					t.Fatal(err)
				}
			}
			for _, req := range puts {
				if err := b.Delete(req.Queue); err != nil {
					t.Fatal(err)
				}
				put(t, b, req.Queue, "plain")
			}
			for _, req := range puts {
				if _, err := a.Put(ctx, req); err != nil {
					t.Fatalf("put to %s after it was made anew: %v", req.Queue, err)
				}
			}
			if ts, err := b.PeekDelayed("jobs", 10); err != nil || !slices.Equal(payloads(ts), []string{"later"}) {
				t.Fatalf("delayed after the queue was made anew: %v, %v", payloads(ts), err)
			}
			// A gateway that opens the queue now knows its levels at once.
			c := newQueues(t, node, jsqueue.Config{})
			var got []queue.Task
			for deadline := time.Now().Add(5 * time.Second); len(got) < 3 && time.Now().Before(deadline); {
				got = append(got, get(t, c, "rush", 1, 3, time.Minute, time.Second)...)
			}
			got = append(got, get(t, c, "rush", 1, 3, time.Minute, 300*time.Millisecond)...) // and no more
			if want := []string{"urgent-2", "urgent-1", "plain"}; !slices.Equal(payloads(got), want) {
				t.Fatalf("handed out after the queue was made anew: %v; want %v", payloads(got), want)
			}
		})
	}
}
