package jsqueue_test

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// packCfg is a packing gateway's configuration for these tests: packs of
// 4, held tasks kept (not moved apart during a test).
func packCfg(ackWait time.Duration) jsqueue.Config {
	return jsqueue.Config{Pack: 4, HoldFor: time.Minute, AckWait: ackWait}
}

// packingGateways opens three packing gateways with cfg on one node: a,
// whose connection kill closes (it dies without a word), b and c.
func packingGateways(t *testing.T, cfg jsqueue.Config) (a, b, c *jsqueue.Queues, kill func()) {
	t.Helper()
	n := startNode(t)
	ncA := connect(t, n)
	cfgA := cfg
	cfgA.Conn = ncA
	return newQueues(t, n, cfgA), newQueues(t, n, cfg), newQueues(t, n, cfg), ncA.Close
}

// getAll takes tasks through q until it has want or wait has passed.
func getAll(t *testing.T, q *jsqueue.Queues, owner uint64, want int, wait time.Duration) []queue.Task {
	t.Helper()
	var got []queue.Task
	deadline := time.Now().Add(wait)
	for len(got) < want && time.Now().Before(deadline) {
		got = append(got, get(t, q, "jobs", owner, want-len(got), time.Minute, time.Until(deadline))...)
	}
	return got
}

// A packed task handed out by a gateway that then dies is completed
// through another with its token: its result is published once, and when
// JetStream delivers the pack again, only its other tasks run.
func TestPackedTaskCompletesThroughAnotherGateway(t *testing.T) {
	const ackWait = 500 * time.Millisecond
	a, b, c, killA := packingGateways(t, packCfg(ackWait))
	ids := put(t, b, "jobs", "w", "x", "y", "z")
	got := get(t, a, "jobs", 1, 2, time.Minute, time.Second)
	if len(got) != 2 || !strings.Contains(got[1].Token, "#") {
		t.Fatalf("got %+v, want two packed tasks with tokens", got)
	}
	killA() // the gateway dies, holding the pack

	published, err := ackThrough(b, 7, got[1])
	if err != nil || len(published) != 1 || published[0].ID != ids[1] || string(published[0].Payload) != "x" {
		t.Fatalf("completion through another gateway: published %+v, %v", published, err)
	}
	for _, q := range []*jsqueue.Queues{b, c} {
		if published, err := ackThrough(q, 7, got[1]); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
			t.Fatalf("the same completion again: published %+v, %v; want ErrNotLeased", published, err)
		}
	}
	reaping(t, c)
	again := getAll(t, c, 9, 4, 20*ackWait)
	if want := []uint64{ids[0], ids[2], ids[3]}; !slices.Equal(taskIDs(again), want) {
		t.Fatalf("after the gateway died got %v, want %v: the pack less the task completed", taskIDs(again), want)
	}
	if again[0].Attempts != 1 {
		t.Errorf("attempt %d, want 1: a pack's redelivery costs its tasks no attempt", again[0].Attempts)
	}
	if published, err := ackThrough(c, 9, again...); err != nil || len(published) != 3 {
		t.Fatalf("the rest: published %d, %v", len(published), err)
	}
	storedBecomes(t, c, "jobs", 0, "once every task was done")
}

// Once a gateway has taken the pack's next delivery, completions through
// tokens of the earlier one are refused, through any gateway.
func TestRedeliveredPackRefusesEarlierTokens(t *testing.T) {
	const ackWait = 500 * time.Millisecond
	a, b, c, killA := packingGateways(t, packCfg(ackWait))
	reaping(t, b)
	ids := put(t, b, "jobs", "w", "x")
	first := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(first) != 1 {
		t.Fatal("no task")
	}
	killA()
	second := getAll(t, b, 2, 2, 20*ackWait)
	if !slices.Equal(taskIDs(second), ids) || second[0].Attempts != 1 || second[0].Token == first[0].Token {
		t.Fatalf("after the first gateway died got %+v, want both tasks at attempt 1 (a pack's redelivery costs its tasks no attempt), with tokens of their own", second)
	}
	for _, q := range []*jsqueue.Queues{b, c} {
		if published, err := ackThrough(q, 7, first[0]); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
			t.Fatalf("completion of the earlier delivery: published %+v, %v; want ErrNotLeased", published, err)
		}
	}
	if published, err := ackThrough(c, 7, second[0]); err != nil || len(published) != 1 || published[0].Attempts != 1 {
		t.Fatalf("completion of the current delivery through another gateway: published %+v, %v", published, err)
	}
}

// A packed task handed out again by a live gateway (its first worker
// left) gets one result, whichever of its two workers completes first:
// the first through another gateway, with its token, or the second.
func TestReissuedPackedTaskHasOneResult(t *testing.T) {
	for _, firstWins := range []bool{true, false} {
		t.Run(map[bool]string{true: "first worker", false: "second worker"}[firstWins], func(t *testing.T) {
			n := startNode(t)
			a := newQueues(t, n, packCfg(0))
			b := newQueues(t, n, packCfg(0))
			reaping(t, a)
			ids := put(t, a, "jobs", "x", "y")
			first := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
			if len(first) != 1 {
				t.Fatal("no task")
			}
			a.Release(1) // its worker left a, for b
			second := get(t, a, "jobs", 2, 1, time.Minute, time.Second)
			if len(second) != 1 || second[0].ID != ids[0] || second[0].Token == first[0].Token {
				t.Fatalf("got %+v, want task %d again, with a token of its own", second, ids[0])
			}
			firstAck := func() ([]queue.Task, error) { return ackThrough(b, 1, first[0]) }
			secondAck := func() ([]queue.Task, error) { return ackThrough(a, 2, second[0]) }
			if !firstWins {
				firstAck, secondAck = secondAck, firstAck
			}
			if published, err := firstAck(); err != nil || len(published) != 1 {
				t.Fatalf("the first completion: published %+v, %v", published, err)
			}
			if published, err := secondAck(); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
				t.Fatalf("the second completion: published %+v, %v; want ErrNotLeased", published, err)
			}
			rest := get(t, a, "jobs", 3, 2, time.Minute, time.Second)
			if !slices.Equal(taskIDs(rest), ids[1:]) {
				t.Fatalf("then got %v, want only %d", taskIDs(rest), ids[1])
			}
			if published, err := ackThrough(a, 3, rest...); err != nil || len(published) != 1 {
				t.Fatalf("the other task: published %+v, %v", published, err)
			}
			storedBecomes(t, a, "jobs", 0, "once both tasks were done")
		})
	}
}

// A packed task whose gateway died is renewed through another by its
// token: its pack outlives its ack wait, and is delivered again only
// after the task is completed, less that task.
func TestPackedTaskRenewsThroughAnotherGateway(t *testing.T) {
	const ackWait = 400 * time.Millisecond
	a, b, c, killA := packingGateways(t, packCfg(ackWait))
	ids := put(t, b, "jobs", "x", "y")
	got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(got) != 1 {
		t.Fatal("no task")
	}
	killA()
	renewThrough(t, b, c, got[0], ackWait)
	if published, err := ackThrough(c, 7, got[0]); err != nil || len(published) != 1 {
		t.Fatalf("completion after the renewals: published %+v, %v", published, err)
	}
	if err := b.ExtendDeliveries("jobs", []uint64{got[0].ID}, []string{got[0].Token}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("renewal of a completed task: %v, want ErrNotLeased", err)
	}
	reaping(t, c)
	if rest := getAll(t, c, 8, 2, 20*ackWait); !slices.Equal(taskIDs(rest), ids[1:]) {
		t.Fatalf("then got %v, want only %d", taskIDs(rest), ids[1])
	}
}

// A failed attempt of a packed task is reported through another gateway
// by its token: the task comes again alone, with the error and the next
// attempt, or goes to the dead-letter queue after its last.
func TestPackedTaskFailsThroughAnotherGateway(t *testing.T) {
	for _, maxAttempts := range []int{3, 1} {
		cfg := packCfg(time.Minute)
		cfg.MaxAttempts = maxAttempts
		a, b, _, killA := packingGateways(t, cfg)
		put(t, b, "jobs", "x", "y")
		got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
		if len(got) != 1 {
			t.Fatal("no task")
		}
		killA()
		nack := queue.NackRequest{Queue: "jobs", Owner: 7, ID: got[0].ID, Error: "boom", Token: got[0].Token}
		if err := b.Nack(nack); err != nil {
			t.Fatalf("nack through another gateway: %v", err)
		}
		if err := b.Nack(nack); !errors.Is(err, queue.ErrNotLeased) {
			t.Fatalf("the same nack again: %v, want ErrNotLeased", err)
		}
		if maxAttempts == 1 {
			st, err := b.Stats(queue.DeadLetterName("jobs"))
			if err != nil || st.Ready != 1 {
				t.Fatalf("dead-letter queue %+v, %v: want the task there", st, err)
			}
			continue
		}
		again := get(t, b, "jobs", 7, 1, time.Minute, 5*time.Second)
		if len(again) != 1 || again[0].ID != got[0].ID || again[0].Attempts != 2 || again[0].LastError != "boom" {
			t.Fatalf("after the nack got %+v, want the task alone at attempt 2 with its error", again)
		}
	}
}

// A held task handed out before, and completed meanwhile through another
// gateway by its first worker's token, is not stored apart when held
// tasks move on: it is done.
func TestHeldTaskCompletedElsewhereIsNotMoved(t *testing.T) {
	n := startNode(t)
	a := newQueues(t, n, jsqueue.Config{Pack: 4, HoldFor: 200 * time.Millisecond})
	b := newQueues(t, n, packCfg(0))
	reaping(t, a)
	ids := put(t, a, "jobs", "x", "y")
	first := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(first) != 1 {
		t.Fatal("no task")
	}
	a.Release(1) // its worker left a for b: the task is held again
	if published, err := ackThrough(b, 1, first[0]); err != nil || len(published) != 1 {
		t.Fatalf("completion through another gateway: published %+v, %v", published, err)
	}
	// a moves both held tasks apart after HoldFor: y only is stored.
	moved := getAll(t, b, 2, 2, 1500*time.Millisecond)
	if !slices.Equal(taskIDs(moved), ids[1:]) {
		t.Fatalf("got %v, want only %d stored apart", taskIDs(moved), ids[1])
	}
	if published, err := ackThrough(b, 2, moved...); err != nil || len(published) != 1 {
		t.Fatalf("the moved task: published %+v, %v", published, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for stored(t, b, "jobs") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still stored 5s after every task was done", stored(t, b, "jobs"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A pack whose every task is completed through another gateway is acked
// by that gateway, at once.
func TestPackCompletedThroughAnotherGatewayIsAcked(t *testing.T) {
	a, b, _, killA := packingGateways(t, packCfg(time.Minute))
	put(t, b, "jobs", "x", "y")
	got := getAll(t, a, 1, 2, time.Second)
	if len(got) != 2 {
		t.Fatalf("got %d tasks", len(got))
	}
	killA()
	for _, task := range got {
		if published, err := ackThrough(b, 1, task); err != nil || len(published) != 1 {
			t.Fatalf("completion through another gateway: published %+v, %v", published, err)
		}
	}
	storedBecomes(t, b, "jobs", 0, "once the pack's tasks were done")
}

// A completion through a token whose results cannot be stored leaves the
// task marked done in its pack, and stores it again alone: unmarking it
// would lose it if a gateway had counted it done meanwhile.
func TestPackedTaskWhoseResultsFailRunsAgainAlone(t *testing.T) {
	a, b, _, killA := packingGateways(t, packCfg(time.Minute))
	ids := put(t, b, "jobs", "x", "y")
	got := getAll(t, a, 1, 2, time.Second)
	if len(got) != 2 {
		t.Fatalf("got %d tasks", len(got))
	}
	killA()
	req := queue.AckRequest{Queue: "jobs", Owner: 7, IDs: []uint64{got[0].ID}, Tokens: []string{got[0].Token},
		Publish: func([]queue.Task) ([]queue.Task, error) { return nil, errors.New("results queue down") }}
	if _, err := b.Ack(req, nil); err == nil {
		t.Fatal("a completion whose results failed went through")
	}
	again := get(t, b, "jobs", 8, 2, time.Minute, 5*time.Second)
	if len(again) != 1 || again[0].ID != ids[0] || again[0].Attempts != 2 || again[0].LastError != "results not stored" {
		t.Fatalf("then got %+v, want task %d alone at attempt 2, its results not stored", again, ids[0])
	}
	if published, err := ackThrough(b, 7, got[0]); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
		t.Fatalf("the first delivery's completion again: published %+v, %v; want ErrNotLeased", published, err)
	}
	if published, err := ackThrough(b, 8, again[0]); err != nil || len(published) != 1 {
		t.Fatalf("the task stored alone: published %+v, %v", published, err)
	}
}

// A packed task failed through another gateway waits out its retry
// delay before it runs again: the worker's retry-after, else the
// queue's backoff.
func TestPackedTaskFailedThroughAnotherGatewayBacksOff(t *testing.T) {
	const wait = 600 * time.Millisecond
	for _, retryAfter := range []time.Duration{0, wait} {
		cfg := packCfg(time.Minute)
		if retryAfter == 0 {
			cfg.RetryBackoffMin, cfg.RetryBackoffMax = wait, wait
		}
		a, b, _, killA := packingGateways(t, cfg)
		reaping(t, b)
		put(t, b, "jobs", "x", "y")
		got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
		if len(got) != 1 {
			t.Fatal("no task")
		}
		killA()
		failed := time.Now()
		nack := queue.NackRequest{Queue: "jobs", Owner: 7, ID: got[0].ID, Error: "boom", Token: got[0].Token, RetryAfter: retryAfter}
		if err := b.Nack(nack); err != nil {
			t.Fatalf("nack through another gateway: %v", err)
		}
		var again []queue.Task
		for len(again) == 0 && time.Since(failed) < 5*time.Second {
			ts := get(t, b, "jobs", 7, 2, time.Minute, time.Second)
			again = slices.DeleteFunc(ts, func(t queue.Task) bool { return string(t.Payload) != "x" })
		}
		// A backoff is drawn from the upper half of its length.
		if took := time.Since(failed); len(again) != 1 || again[0].ID != got[0].ID || again[0].Attempts != 2 || took < wait/2 {
			t.Fatalf("retry after %v: got %+v after %v; want the task at attempt 2 after at least %v", retryAfter, again, took, wait/2)
		}
	}
}

// The workers of a dead gateway complete its pack's tasks through the
// other gateways all at once, each worker all its tasks in one call:
// every task gets one result, the pack is acked, and each completion
// writes the pack's record once. Written once a task, as before, the
// writes (compare-and-sets on one record) lost to each other, and a
// completion could fail after too many losses.
func TestWorkersOfADeadGatewayCompleteItsPackAtOnce(t *testing.T) {
	const workers, each = 4, 8
	a, b, c, killA := packingGateways(t, jsqueue.Config{Pack: workers * each, HoldFor: time.Minute, AckWait: time.Minute})
	ps := make([]string, workers*each)
	for i := range ps {
		ps[i] = strconv.Itoa(i)
	}
	ids := put(t, b, "jobs", ps...)
	held := make([][]queue.Task, workers)
	for w := range held {
		if held[w] = getAll(t, a, uint64(w+1), each, time.Second); len(held[w]) != each {
			t.Fatalf("worker %d got %d tasks, want %d", w+1, len(held[w]), each)
		}
	}
	killA()
	before, err := jsqueue.RecordWrites(b)
	if err != nil {
		t.Fatal(err)
	}

	published := make([][]queue.Task, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range held {
		through := []*jsqueue.Queues{b, c}[w%2]
		wg.Go(func() { published[w], errs[w] = ackThrough(through, uint64(w+1), held[w]...) })
	}
	wg.Wait()
	var got []uint64
	for w := range held {
		if errs[w] != nil || len(published[w]) != each {
			t.Errorf("worker %d's completion through another gateway: published %d of %d, %v", w+1, len(published[w]), each, errs[w])
		}
		got = append(got, taskIDs(published[w])...)
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Fatalf("results of %v, want one of each of %v", got, ids)
	}
	after, err := jsqueue.RecordWrites(b)
	if err != nil {
		t.Fatal(err)
	}
	if after-before > workers {
		t.Errorf("%d writes of the pack's record for %d completions", after-before, workers)
	}
	storedBecomes(t, b, "jobs", 0, "once every task was done")
}
