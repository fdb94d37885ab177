package jsqueue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

func TestPackCodec(t *testing.T) {
	payloads := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte("x"), 300), []byte("last")}
	b := encodePack(payloads)
	got, err := decodePack(b, "4")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, payloads, bytes.Equal) {
		t.Fatalf("got %q, want %q", got, payloads)
	}
	for _, c := range []struct {
		name, count string
		body        []byte
	}{
		{"count too high", "5", b},
		{"count too low", "3", b},
		{"count not a number", "four", b},
		{"count over MaxPack", strconv.Itoa(MaxPack + 1), b},
		{"empty", "1", nil},
		{"length past the end", "1", []byte{5, 'a'}},
		{"truncated varint", "1", []byte{0x80}},
	} {
		if _, err := decodePack(c.body, c.count); err == nil {
			t.Errorf("%s: decoded", c.name)
		}
	}
	// A payload may not grow into the next one's bytes.
	before := bytes.Clone(b)
	_ = append(got[0], 'z')
	if !bytes.Equal(b, before) {
		t.Errorf("appending to a payload changed the pack: %q", b)
	}
	// A length written in more bytes than it needs is refused, so that a
	// pack has one encoding.
	if _, err := decodePack([]byte{0x81, 0x00, 'a'}, "1"); err == nil {
		t.Errorf("an overlong length decoded")
	}
}

func TestPackMsgs(t *testing.T) {
	msg := func(data, replyTo, key string) *nats.Msg {
		m := &nats.Msg{Subject: "s", Data: []byte(data)}
		if replyTo != "" || key != "" {
			m.Header = nats.Header{}
		}
		if replyTo != "" {
			m.Header.Set(hdrReplyTo, replyTo)
		}
		if key != "" {
			m.Header.Set("Nats-Msg-Id", key)
		}
		return m
	}
	msgs := []*nats.Msg{
		msg("1", "", ""), msg("2", "", ""), msg("3", "", ""), // a pack of 2, then a pack of 1 is plain
		msg("4", "r", ""), msg("5", "r", ""), // a pack with its reply queue
		msg("6", "", "k"), // keyed: plain
		msg("7", "", ""),  // alone between keyed ones: plain
		msg("8", "", "k2"),
	}
	out, counts := packMsgs("s", msgs, 2, 0)
	if want := []int{2, 0, 2, 0, 0, 0}; !slices.Equal(counts, want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
	if got, _ := decodePack(out[0].Data, out[0].Header.Get(hdrPack)); len(got) != 2 || string(got[1]) != "2" {
		t.Errorf("first pack %q", got)
	}
	if out[2].Header.Get(hdrReplyTo) != "r" || out[1].Header.Get(hdrPack) != "" || string(out[1].Data) != "3" {
		t.Errorf("reply queue or plain message lost: %v, %v", out[2].Header, out[1])
	}
	ids := packedIDs([]uint64{10, 11, 12, 13, 14, 15}, counts, len(msgs))
	want := []uint64{packedID(10, 0), packedID(10, 1), 11, packedID(12, 0), packedID(12, 1), 13, 14, 15}
	if !slices.Equal(ids, want) {
		t.Errorf("ids %v, want %v", ids, want)
	}
}

// Packs stay within the bytes a message may carry: a run of tasks too
// large together is split, and a task larger than the bound alone goes
// plain (checkSizes refuses it before).
func TestPackMsgsBoundsBytes(t *testing.T) {
	msg := func(n int) *nats.Msg { return &nats.Msg{Data: bytes.Repeat([]byte{'x'}, n)} }
	per := binary.MaxVarintLen32 + 100 // what each 100-byte task takes of a pack
	msgs := []*nats.Msg{msg(100), msg(100), msg(100), msg(100), msg(100), msg(1000), msg(100)}
	out, counts := packMsgs("s", msgs, 32, 2*per)
	if want := []int{2, 2, 0, 0, 0}; !slices.Equal(counts, want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
	for i, m := range out {
		if counts[i] > 0 && len(m.Data) > 2*per {
			t.Errorf("pack %d carries %d bytes, over %d", i, len(m.Data), 2*per)
		}
	}
	if len(out[3].Data) != 1000 {
		t.Errorf("the large task went into a pack: %d bytes", len(out[3].Data))
	}
}

// A completion's results are laid out by delivery: one packed delivery's
// tasks together, sorted, wherever they are; a task with a plain
// delivery (one moved out of its pack keeps its packed ID) alone.
func TestPackResultsByDelivery(t *testing.T) {
	p1, p2 := packToken(7, 1, 1), packToken(9, 2, 1)
	tasks := []queue.Task{
		{ID: packedID(10, 3), Token: p1},
		{ID: packedID(11, 0), Token: p2},
		{ID: packedID(10, 1), Token: p1},
		{ID: packedID(10, 2), Token: "$JS.ACK.s.c.1.40.40.0.0"}, // moved out of pack 10
		{ID: 12, Token: "$JS.ACK.s.c.1.12.12.0.0"},
		{ID: packedID(11, 5), Token: p2},
	}
	msgs := make([]*nats.Msg, len(tasks))
	for i := range msgs {
		msgs[i] = &nats.Msg{Data: []byte(strconv.Itoa(i))}
	}
	out, counts, order := packResults("s", msgs, tasks, 0)
	if want := []int{2, 0, 1, 5, 3, 4}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	if want := []int{2, 2, 0, 0}; !slices.Equal(counts, want) || len(out) != 4 {
		t.Fatalf("counts %v of %d messages, want %v", counts, len(out), want)
	}
	if got, _ := decodePack(out[0].Data, out[0].Header.Get(hdrPack)); len(got) != 2 || string(got[0]) != "2" || string(got[1]) != "0" {
		t.Errorf("pack 10's results %q, want those of tasks 2 and 0, by ID", got)
	}
}

// FuzzDecodePack: a pack read from JetStream is decoded without a panic,
// and what decodes encodes back to the same bytes.
func FuzzDecodePack(f *testing.F) {
	f.Add(encodePack([][]byte{[]byte("a"), []byte("bc")}), "2")
	f.Add([]byte{0x80}, "1")
	f.Add([]byte{}, "0")
	f.Fuzz(func(t *testing.T, body []byte, count string) {
		payloads, err := decodePack(body, count)
		if err != nil {
			return
		}
		if !bytes.Equal(encodePack(payloads), body) {
			t.Fatalf("%q decoded to %q, which encodes differently", body, payloads)
		}
	})
}

// packQueues opens a gateway with cfg on a node of its own, reaping.
func packQueues(t *testing.T, cfg Config) *Queues {
	t.Helper()
	q := openQueues(t, startTestNode(t), cfg)
	reap(t, q)
	return q
}

// startTestNode starts a JetStream node of the test's own.
func startTestNode(t *testing.T) *Node {
	t.Helper()
	n, err := StartNode(NodeConfig{DataDir: t.TempDir(), Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	return n
}

// reap runs q's reaper until the test ends.
func reap(t *testing.T, q *Queues) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() { defer close(stopped); q.ReapLeases(done, nil) }()
	t.Cleanup(func() { close(done); <-stopped })
}

// openQueues opens a gateway with cfg (HoldFor a minute unless set) on
// n, over a connection of its own.
func openQueues(t *testing.T, n *Node, cfg Config) *Queues {
	t.Helper()
	if cfg.HoldFor == 0 {
		cfg.HoldFor = time.Minute
	}
	var err error
	if cfg.Conn, err = n.Connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Conn.Close)
	q, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return q
}

func putN(t *testing.T, q *Queues, name string, n int) []uint64 {
	t.Helper()
	items := make([]queue.Item, n)
	for i := range items {
		items[i] = queue.Item{Payload: []byte{byte('a' + i)}}
	}
	ids, err := q.Put(context.Background(), queue.PutRequest{Queue: name, Items: items})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func getN(t *testing.T, q *Queues, name string, owner uint64, max int, wait time.Duration) []queue.Task {
	t.Helper()
	ts, err := q.Get(context.Background(), queue.GetRequest{Queue: name, Max: max, Owner: owner, MaxWait: wait}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// A queue's stream is opened anew after an error (forget): the tasks the
// gateway holds of it are still handed out.
func TestHeldTasksOutliveAReopenedStream(t *testing.T) {
	q := packQueues(t, Config{Pack: 4})
	putN(t, q, "jobs", 4)
	if ts := getN(t, q, "jobs", 1, 1, time.Second); len(ts) != 1 {
		t.Fatalf("got %d tasks", len(ts))
	}
	q.forget("jobs") // as a failed pull or put does
	if ts := getN(t, q, "jobs", 1, 3, time.Second); len(ts) != 3 {
		t.Fatalf("after the stream was opened anew got %d of the 3 held tasks", len(ts))
	}
}

// A pack lost (or purged, or handed back) while an Ack of its tasks was
// under way: that Ack's settle must leave alone the pack's next delivery,
// taken by this gateway meanwhile under the same key.
func TestStaleSettleLeavesTheNextDelivery(t *testing.T) {
	q := packQueues(t, Config{Pack: 2, AckWait: time.Second})
	putN(t, q, "jobs", 2)
	ts := getN(t, q, "jobs", 1, 2, time.Second)
	if len(ts) != 2 {
		t.Fatalf("got %d tasks", len(ts))
	}
	release, acked := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(acked)
		_, _ = q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{ts[0].ID, ts[1].ID}, Publish: func([]queue.Task) ([]queue.Task, error) { <-release; return nil, nil }}, nil)
	}()
	time.Sleep(100 * time.Millisecond) // the Ack is publishing
	q.mu.Lock()
	for _, p := range q.packs {
		q.loseLocked(p) // as the reaper does when renewals go unconfirmed
	}
	q.mu.Unlock()
	again := getN(t, q, "jobs", 2, 1, 5*time.Second) // JetStream's next delivery
	if len(again) != 1 {
		t.Fatalf("the pack was not delivered again: %+v", again)
	}
	close(release)
	<-acked
	q.mu.Lock()
	packs := len(q.packs)
	q.mu.Unlock()
	if packs != 1 {
		t.Fatalf("%d packs held after the stale Ack, want the next delivery", packs)
	}
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 2, ID: again[0].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	if ts := getN(t, q, "jobs", 3, 2, time.Second); len(ts) != 2 {
		t.Fatalf("after a nack got %d tasks, want both of the pack", len(ts))
	}
}

// A held task whose move to the dead-letter queue fails waits a while: a
// get does not try it again and again past its own wait.
func TestFailingDeadLetterDoesNotHoldAGet(t *testing.T) {
	q := packQueues(t, Config{Pack: 2, MaxAttempts: 1, RequestTimeout: 200 * time.Millisecond})
	putN(t, q, "jobs", 2)
	ctx := context.Background()
	// The dead-letter queue's stream takes nothing on its subject.
	if _, err := q.js.CreateStream(ctx, jetstream.StreamConfig{Name: streamName(queue.DeadLetterName("jobs")), Subjects: []string{"elsewhere"}}); err != nil {
		t.Fatal(err)
	}
	ts := getN(t, q, "jobs", 1, 1, time.Second)
	if len(ts) != 1 {
		t.Fatalf("got %d tasks", len(ts))
	}
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "x"}); err == nil {
		t.Fatal("the dead-letter move succeeded")
	}
	for range 2 {
		start := time.Now()
		got := getN(t, q, "jobs", 2, 2, 500*time.Millisecond)
		if waited := time.Since(start); waited > 3*time.Second {
			t.Fatalf("a get with a 500ms wait took %v", waited)
		}
		for _, task := range got {
			if task.ID == ts[0].ID {
				t.Fatalf("the task past its last attempt was handed out: %+v", task)
			}
		}
	}
}

// Held tasks of two queues are moved apart when one queue's stream is
// gone (deleted through another gateway): the other's are stored once.
func TestMovesOfOneQueueDoNotRepeatAnother(t *testing.T) {
	q := packQueues(t, Config{Pack: 4, HoldFor: 200 * time.Millisecond, RequestTimeout: time.Second})
	putN(t, q, "a", 4)
	putN(t, q, "b", 4)
	getN(t, q, "a", 1, 1, time.Second)
	getN(t, q, "b", 1, 1, time.Second)
	if err := q.js.DeleteStream(context.Background(), streamName("a")); err != nil {
		t.Fatal(err)
	}
	s, err := q.open("b", false)
	if err != nil {
		t.Fatal(err)
	}
	stored := func() uint64 {
		si, err := s.st.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return si.State.Msgs
	}
	// A worker of another gateway waits for b's tasks: they are moved.
	fetched := make(chan error, 1)
	go func() {
		_, err := s.cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		fetched <- err
	}()
	defer func() { <-fetched }()
	deadline := time.Now().Add(10 * time.Second)
	for stored() < 4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	// Several more rounds of moves, which must store nothing more.
	time.Sleep(4 * q.cfg.HoldFor)
	if n := stored(); n != 4 {
		t.Fatalf("queue b stores %d messages, want its pack and the 3 tasks moved apart", n)
	}
}

// A gateway that dies with a pack partly done: the gateway JetStream
// delivers the pack to next runs only the tasks not done, and deletes the
// pack's record once the pack is acked.
func TestDeadGatewaysDoneTasksDoNotRunAgain(t *testing.T) {
	n := startTestNode(t)
	cfg := Config{Pack: 8, AckWait: 300 * time.Millisecond}
	dying := openQueues(t, n, cfg)
	next := openQueues(t, n, cfg)
	reap(t, next)

	putIDs := putN(t, dying, "jobs", 4)
	ts := getN(t, dying, "jobs", 1, 4, time.Second)
	if len(ts) != 4 {
		t.Fatalf("got %d tasks", len(ts))
	}
	for _, id := range []uint64{ts[0].ID, ts[2].ID} { // two completions, each leaving tasks to do
		if _, err := dying.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{id}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	dying.cfg.Conn.Close() // gone without a word

	again := getN(t, next, "jobs", 7, 8, 5*time.Second)
	if got := []uint64{again[0].ID, again[len(again)-1].ID}; len(again) != 2 || got[0] != putIDs[1] || got[1] != putIDs[3] {
		t.Fatalf("after the gateway died got %+v, want tasks 2 and 4 only", again)
	}
	if again[0].Attempts != 1 {
		t.Errorf("attempt %d, want 1: a pack's redelivery costs its tasks no attempt", again[0].Attempts)
	}
	if _, err := next.Ack(queue.AckRequest{Queue: "jobs", Owner: 7, IDs: []uint64{again[0].ID, again[1].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	recs, err := next.records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := packRecordKey(streamName("jobs"), (putIDs[0]&^packedIDBit)>>6)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := recs.GetLastMsgForSubject(ctx, key)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the acked pack's record is still there 5s later: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s, _ := next.open("jobs", false)
	if si, err := s.st.Info(ctx); err != nil || si.State.Msgs != 0 {
		t.Fatalf("stream state %+v, %v: want the pack acked", si, err)
	}
}

// A record left by a pack of an earlier stream of the queue (deleted and
// made anew, so sequences start again) is not taken for the new pack's.
func TestStaleRecordOfAnEarlierStreamIsIgnored(t *testing.T) {
	q := packQueues(t, Config{Pack: 4})
	ctx := context.Background()
	if _, err := q.records(ctx); err != nil {
		t.Fatal(err)
	}
	key := packRecordKey(streamName("jobs"), 1)
	if _, err := q.js.Publish(ctx, key, recordValue(packRecord{done: 0b1111}, time.Unix(1, 0))); err != nil {
		t.Fatal(err)
	}
	putN(t, q, "jobs", 4) // a pack at sequence 1
	s, err := q.open("jobs", false)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := q.readRecord(ctx, key, m.Time); err != nil || r.done != 0 {
		t.Fatalf("the stale record read as %+v, %v for the new pack", r, err)
	}
	ts := getN(t, q, "jobs", 1, 4, time.Second)
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{ts[1].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := q.readRecord(ctx, key, m.Time); err != nil || r.done != 0b10 {
		t.Fatalf("the new pack's record reads %+v, %v; want its task 2 done, written over the stale one", r, err)
	}
}

// A packed queue's figures count tasks, not packs, through Stats and
// AllStats: Gets too, which counted a pack delivered as one.
func TestPackedQueueCountsTasks(t *testing.T) {
	q := packQueues(t, Config{Pack: 4})
	// The packs' counter is added to without waiting: Puts may lag.
	check := func(when string, ready, leased int, puts, done, gets uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st, err := q.Stats("jobs")
			if err != nil {
				t.Fatal(err)
			}
			all, err := q.AllStats()
			if err != nil {
				t.Fatal(err)
			}
			if len(all) == 1 {
				all[0].OldestReady = st.OldestReady
			}
			ok := len(all) == 1 && all[0] == st
			if ok && st.Ready == ready && st.Leased == leased && st.Puts == puts && st.Done == done && st.Gets == gets {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Stats %+v, AllStats %+v; want ready %d, leased %d, puts %d, done %d, gets %d",
					when, st, all, ready, leased, puts, done, gets)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	putN(t, q, "jobs", 10) // packs of 4, 4 and 2
	putN(t, q, "jobs", 1)  // alone
	check("after the puts", 11, 0, 11, 0, 0)
	ts := getN(t, q, "jobs", 1, 3, time.Second) // of the first pack
	check("three delivered", 8, 3, 11, 0, 3)
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "again"}); err != nil {
		t.Fatal(err)
	}
	ts = ts[1:]
	for len(ts) < 11 {
		ts = append(ts, getN(t, q, "jobs", 1, 11-len(ts), time.Second)...)
	}
	check("all delivered, one twice", 0, 11, 11, 0, 12)
	ids := make([]uint64, len(ts))
	for i, task := range ts {
		ids[i] = task.ID
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); err != nil {
		t.Fatal(err)
	}
	check("all done", 0, 0, 11, 11, 12)
}

// TestRepeatedPutIsNotCounted: a put sent again, which JetStream stores
// none of, adds nothing to the queue's count of tasks put.
func TestRepeatedPutIsNotCounted(t *testing.T) {
	q := packQueues(t, Config{Pack: 4})
	q.mu.Lock()
	q.countsSent = time.Now().Add(time.Hour) // the reaper sends none meanwhile
	q.mu.Unlock()
	items := make([]queue.Item, 10) // packs of 4, 4 and 2
	for i := range items {
		items[i] = queue.Item{Payload: []byte{byte(i)}}
	}
	req := queue.PutRequest{Queue: "jobs", Items: items, RequestID: "r"}
	for range 2 {
		if _, err := q.Put(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := q.takeCounts(time.Time{})[countsSubject+streamName("jobs")], 3+3+1; got != want {
		t.Fatalf("the packs carried %d tasks beyond one each by the counts, want %d", got, want)
	}
}

// A max queue length counts packed tasks one by one.
func TestMaxLenCountsPackedTasks(t *testing.T) {
	q := packQueues(t, Config{Pack: 4, MaxLen: 10})
	putN(t, q, "jobs", 8)
	items := make([]queue.Item, 4)
	for i := range items {
		items[i] = queue.Item{Payload: []byte("x")}
	}
	if _, err := q.Put(queue.NoWait, queue.PutRequest{Queue: "jobs", Items: items}); !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("a put of 4 onto 8 of at most 10: %v, want ErrQueueFull", err)
	}
	if _, err := q.Put(queue.NoWait, queue.PutRequest{Queue: "jobs", Items: items[:2]}); err != nil {
		t.Fatalf("a put of 2 onto 8 of at most 10: %v", err)
	}
	// Tasks of a pack taken for good leave room, though the pack's
	// message still carries them until its last is done.
	ts := getN(t, q, "jobs", 1, 3, time.Second)
	if len(ts) != 3 {
		t.Fatalf("got %d tasks, want 3", len(ts))
	}
	// Nor does peek list them, out or done.
	for _, when := range []string{"out", "done"} {
		peeked, err := q.Peek("jobs", 100)
		if err != nil || len(peeked) != 7 || slices.ContainsFunc(peeked, func(p queue.Task) bool { return p.ID == ts[0].ID || p.ID == ts[2].ID }) {
			t.Fatalf("peek with 3 tasks %s: %d tasks, %v; want the 7 others", when, len(peeked), err)
		}
		if when == "out" {
			if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{ts[0].ID, ts[1].ID, ts[2].ID}}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := q.Put(queue.NoWait, queue.PutRequest{Queue: "jobs", Items: items[:3]}); err != nil {
		t.Fatalf("a put of 3 onto 7 left of at most 10: %v", err)
	}
}

// A queue's stream made before packs had subjects of their own takes
// packs once a packing gateway opens it.
func TestStreamOfBeforePacksTakesPacks(t *testing.T) {
	q := packQueues(t, Config{Pack: 4})
	ctx := context.Background()
	if _, err := q.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      streamName("old"),
		Subjects:  []string{subject("old")},
		Retention: jetstream.WorkQueuePolicy,
		Metadata:  map[string]string{metaQueueName: "old"},
	}); err != nil {
		t.Fatal(err)
	}
	if ids := putN(t, q, "old", 4); len(ids) != 4 {
		t.Fatalf("ids %v", ids)
	}
	if st, err := q.Stats("old"); err != nil || st.Ready != 4 {
		t.Fatalf("stats %+v, %v; want 4 ready", st, err)
	}
	if ts := getN(t, q, "old", 1, 4, time.Second); len(ts) != 4 {
		t.Fatalf("got %d tasks, want the pack's 4", len(ts))
	}
}

// FuzzParseTokens: a delivery token a client sends, of either form, is
// read without a panic; what a packed task's reads as is what it was
// made of, and every packed token made is read back the same.
func FuzzParseTokens(f *testing.F) {
	f.Add(packToken(1, 7, 2))
	f.Add("$JS.ACK.QM_jobs_0123456789abcdef.qm.1.5.5.1796296663243060815.0")
	f.Add("#0.1.1")
	f.Add("#1.2")
	f.Add("$JS.ACK.d.h.S.qm.1.2.3.4.5.x")
	f.Fuzz(func(t *testing.T, token string) {
		if tok, ok := parseToken(token); ok && (tok.delivered == 0 || tok.seq == 0) {
			t.Fatalf("%q read as %+v", token, tok)
		}
		delivered, dseq, attempts, ok := parsePackToken(token)
		if !ok {
			return
		}
		if delivered == 0 || dseq == 0 || attempts < 1 {
			t.Fatalf("%q read as %d, %d, %d", token, delivered, dseq, attempts)
		}
		d2, s2, a2, ok2 := parsePackToken(packToken(delivered, dseq, attempts))
		if !ok2 || d2 != delivered || s2 != dseq || a2 != attempts {
			t.Fatalf("%q: made again, reads %d, %d, %d, %v", token, d2, s2, a2, ok2)
		}
	})
}

// Held tasks that no other gateway's workers wait for stay held past
// HoldFor, in order: stored apart, they would go behind tasks put after
// them.
func TestHeldTasksNobodyElseWaitsForStayInOrder(t *testing.T) {
	q := packQueues(t, Config{Pack: 4, HoldFor: 100 * time.Millisecond})
	ids := putN(t, q, "jobs", 8) // two packs
	first := getN(t, q, "jobs", 1, 1, time.Second)
	if len(first) != 1 || first[0].ID != ids[0] {
		t.Fatalf("got %+v, want the first task", first)
	}
	// Wait until the reaper has looked at the overdue tasks twice: the
	// mover handles one look at a time, so the first one's is done.
	lookedAt := func() time.Time {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.locals["jobs"].lookedAt
	}
	deadline := time.Now().Add(5 * time.Second)
	var looks []time.Time
	for len(looks) < 2 {
		if at := lookedAt(); !at.IsZero() && (len(looks) == 0 || at != looks[len(looks)-1]) {
			looks = append(looks, at)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reaper looked at the held tasks %d times in 5s", len(looks))
		}
		time.Sleep(10 * time.Millisecond)
	}
	var rest []queue.Task
	for len(rest) < 7 && time.Now().Before(deadline) {
		rest = append(rest, getN(t, q, "jobs", 1, 7-len(rest), time.Second)...)
	}
	got := make([]uint64, len(rest))
	for i, task := range rest {
		got[i] = task.ID
	}
	if !slices.Equal(got, ids[1:]) {
		t.Fatalf("then got %v, want %v: in the order put", got, ids[1:])
	}
}

// A pause, and a resume, through another gateway stop and restart the
// handing out of the tasks this gateway holds, once it has looked.
func TestPauseThroughAnotherGatewayHoldsHeldTasks(t *testing.T) {
	n := startTestNode(t)
	a := openQueues(t, n, Config{Pack: 4, HoldFor: 100 * time.Millisecond})
	b := openQueues(t, n, Config{Pack: 4})
	reap(t, a)
	ids := putN(t, a, "jobs", 4)
	getN(t, a, "jobs", 1, 1, time.Second) // the rest held by a
	pausedAtA := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			a.mu.Lock()
			paused := a.locals["jobs"].paused
			a.mu.Unlock()
			if paused == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("a did not see the queue paused %v within 5s", want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := b.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	pausedAtA(true)
	if ts := getN(t, a, "jobs", 2, 1, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("a paused queue handed out %+v", ts)
	}
	if err := b.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	pausedAtA(false)
	if ts := getN(t, a, "jobs", 2, 1, time.Second); len(ts) != 1 || ts[0].ID != ids[1] {
		t.Fatalf("after the resume got %+v, want task 2", ts)
	}
}

// A pack finished through another gateway's token is acked there and its
// record deleted; the gateway holding it, which had handed the task out
// again, then refuses that delivery's completion: a record that reads as
// none is not taken for a pack with nothing done.
func TestPackFinishedThroughATokenRefusesTheReissuedTask(t *testing.T) {
	n := startTestNode(t)
	a := openQueues(t, n, Config{Pack: 4})
	b := openQueues(t, n, Config{Pack: 4})
	reap(t, a)
	reap(t, b)
	ids := putN(t, a, "jobs", 2)
	first := getN(t, a, "jobs", 1, 2, time.Second)
	for len(first) < 2 {
		first = append(first, getN(t, a, "jobs", 1, 2-len(first), time.Second)...)
	}
	publish := func(n *int) func([]queue.Task) ([]queue.Task, error) {
		return func(ts []queue.Task) ([]queue.Task, error) { *n += len(ts); return nil, nil }
	}
	var byA, byB int
	if _, err := a.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids[1:], Publish: publish(&byA)}, nil); err != nil {
		t.Fatal(err) // the pack's record: task 2 done
	}
	a.Release(1) // task 1's worker left a, for b
	second := getN(t, a, "jobs", 2, 1, time.Second)
	if len(second) != 1 || second[0].ID != ids[0] {
		t.Fatalf("got %+v, want task 1 again", second)
	}
	// Task 1's first worker completes it through b: the pack is done.
	if _, err := b.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids[:1], Tokens: []string{first[0].Token}, Publish: publish(&byB)}, nil); err != nil || byB != 1 {
		t.Fatalf("completion through b: %d published, %v", byB, err)
	}
	ctx := context.Background()
	recs, err := b.records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := packRecordKey(streamName("jobs"), (ids[0]&^packedIDBit)>>6)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := recs.GetLastMsgForSubject(ctx, key); errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the acked pack's record is still there 5s later")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err = a.Ack(queue.AckRequest{Queue: "jobs", Owner: 2, IDs: ids[:1], Publish: publish(&byA)}, nil)
	if !errors.Is(err, queue.ErrNotLeased) || byA != 1 {
		t.Fatalf("the second worker's completion: %v, %d results through a; want ErrNotLeased and only task 2's", err, byA)
	}
}

// A gateway that closes sends the counts it had not sent yet: without a
// reaper running, only Close sends them.
func TestClosingGatewaySendsItsCounts(t *testing.T) {
	n := startTestNode(t)
	a := openQueues(t, n, Config{Pack: 4})
	b := openQueues(t, n, Config{Pack: 4})
	ids := putN(t, a, "jobs", 8) // two packs: 6 tasks beyond one each
	a.Close()
	var got []queue.Task
	for len(got) < 8 {
		ts := getN(t, b, "jobs", 1, 8-len(got), time.Second)
		if len(ts) == 0 {
			t.Fatalf("got %d of the 8 tasks", len(got))
		}
		got = append(got, ts...)
	}
	if _, err := b.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := b.Stats("jobs")
		if err != nil {
			t.Fatal(err)
		}
		if st.Puts == 8 && st.Done == 8 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("puts %d, done %d 5s after the gateway closed, want 8 and 8", st.Puts, st.Done)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPackedPutIsStoredOnceSentAgain: a packed put without keys, and a
// put of one task, carry message IDs of the gateway's own, so that
// publish may send them again when their leader dies with the acks: sent
// again, JetStream stores none of it twice. A batched put of a message a
// task (--pack 1) carries none (their cost).
func TestPackedPutIsStoredOnceSentAgain(t *testing.T) {
	q := packQueues(t, Config{Pack: 32})
	items := make([]queue.Item, 70)
	for i := range items {
		items[i] = queue.Item{Payload: []byte{byte(i)}}
	}
	if _, err := q.Put(context.Background(), queue.PutRequest{Queue: "jobs", Items: items}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Put(context.Background(), queue.PutRequest{Queue: "jobs", Items: items[:1]}); err != nil {
		t.Fatal(err)
	}
	s, err := q.open("jobs", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ids []string
	for seq := uint64(1); seq <= 4; seq++ {
		m, err := s.st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		id := m.Header.Get(jetstream.MsgIDHeader)
		ids = append(ids, id)
		// Sent again as publish would: the same subject, headers and data.
		ack, err := q.js.PublishMsg(ctx, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		if err != nil || !ack.Duplicate || ack.Sequence != seq {
			t.Fatalf("message %d (ID %q) sent again: %+v, %v; want a duplicate of %d", seq, id, ack, err, seq)
		}
	}
	for i, want := range []string{"/0+32", "/32+32", "/64+6", "/0+1"} {
		if prefix := queue.RequestKey(q.putIDs); !strings.HasPrefix(ids[i], prefix) || !strings.HasSuffix(ids[i], want) {
			t.Errorf("message %d has the ID %q, want %q...%q", i+1, ids[i], prefix, want)
		}
	}
	if strings.TrimSuffix(ids[3], "/0+1") == strings.TrimSuffix(ids[0], "/0+32") {
		t.Errorf("the put of one task has the first put's request ID: %q and %q", ids[3], ids[0])
	}

	unpacked := packQueues(t, Config{Pack: 1})
	if _, err := unpacked.Put(ctx, queue.PutRequest{Queue: "jobs", Items: items[:2]}); err != nil {
		t.Fatal(err)
	}
	us, err := unpacked.open("jobs", false)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := us.st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); id != "" {
			t.Errorf("message %d of a put of two with --pack 1 has the ID %q", seq, id)
		}
	}
	if st, err := q.Stats("jobs"); err != nil || st.Ready != 71 {
		t.Fatalf("after the packs were sent again: %+v, %v; want 71 ready", st, err)
	}
}

// The completions of a pack's tasks that come while its record is being
// written are written together, in one write, and none is lost.
func TestCompletionsOfAPackShareARecordWrite(t *testing.T) {
	const n = 8
	q := packQueues(t, Config{Pack: n})
	ctx := context.Background()
	putN(t, q, "jobs", n)
	var ts []queue.Task
	for owner := uint64(1); owner <= n; owner++ {
		ts = append(ts, getN(t, q, "jobs", owner, 1, time.Second)...)
	}
	if len(ts) != n {
		t.Fatalf("got %d tasks, want %d", len(ts), n)
	}
	q.mu.Lock()
	var p *pack
	for _, held := range q.packs {
		p = held
	}
	q.mu.Unlock()
	if p == nil {
		t.Fatal("no pack held")
	}
	recs, err := q.records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	writes := func() uint64 {
		t.Helper()
		info, err := recs.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}
	before := writes()

	p.recordMu.Lock() // as a write on its way does
	const waiting = n - 2
	var wg sync.WaitGroup
	for i := range waiting {
		wg.Go(func() {
			if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: uint64(i + 1), IDs: []uint64{ts[i].ID}}, nil); err != nil {
				t.Error(err)
			}
		})
	}
	want := uint64(1)<<waiting - 1
	for deadline := time.Now().Add(5 * time.Second); ; {
		q.mu.Lock()
		queued := p.toRecord
		q.mu.Unlock()
		if queued == want {
			break
		}
		if time.Now().After(deadline) {
			p.recordMu.Unlock()
			wg.Wait()
			t.Fatalf("tasks waiting for the record: %b, want %b", queued, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.recordMu.Unlock()
	wg.Wait()

	if got := writes() - before; got != 1 {
		t.Errorf("%d completions made %d record writes, want 1", waiting, got)
	}
	if r, err := q.readRecord(ctx, p.recordKey(), p.stored); err != nil || r.done != want {
		t.Fatalf("the record reads %+v, %v; want done %b", r, err, want)
	}
	// The last two: one more write, then the pack is acked.
	for i := waiting; i < n; i++ {
		if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: uint64(i + 1), IDs: []uint64{ts[i].ID}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; { // the packs' counter may lag
		st, err := q.Stats("jobs")
		if err == nil && st.Done == n && st.Ready == 0 && st.Leased == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every completion: %+v, %v; want %d done", st, err, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A task whose record write failed is settled all the same, and its bit
// waits in the pack for the next write: the next completion counts only
// the tasks not yet settled when it tells whether it is the pack's last.
// (It once counted that bit too, took itself for the last, and wrote
// nothing: a gateway dying before the pack's last task then left the
// completed ones to run again.)
func TestRecordWriteAfterAFailedOneIsNotTakenForTheLast(t *testing.T) {
	q := packQueues(t, Config{Pack: 4})
	ctx := context.Background()
	putN(t, q, "jobs", 4)
	var ts []queue.Task
	for owner := uint64(1); owner <= 4; owner++ {
		ts = append(ts, getN(t, q, "jobs", owner, 1, time.Second)...)
	}
	if len(ts) != 4 {
		t.Fatalf("got %d tasks, want 4", len(ts))
	}
	ack := func(i int) {
		t.Helper()
		if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: uint64(i + 1), IDs: []uint64{ts[i].ID}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	ack(0)
	q.mu.Lock()
	var p *pack
	for _, held := range q.packs {
		p = held
	}
	// Task 1 as a failed record write leaves it: settled, its bit waiting.
	l := q.leases[leaseKey{queue: "jobs", id: ts[1].ID}]
	if p == nil || l == nil || l.pack != p {
		q.mu.Unlock()
		t.Fatalf("pack %v, lease of task 2 %v", p, l)
	}
	p.toRecord |= 1 << l.index
	q.settleLocked(l)
	q.mu.Unlock()

	ack(2) // two tasks left before it (2 and 3): not the last
	if r, err := q.readRecord(ctx, p.recordKey(), p.stored); err != nil || r.done != 0b111 {
		t.Fatalf("the record reads %+v, %v; want tasks 1 to 3 done", r, err)
	}
}

// A gateway that resumes a queue wakes its own waiting gets itself, with
// no advisory (a client not allowed to read them, or one dropped): it
// woke only as many as it held tasks, none here, and the get waited for
// its pull to expire.
func TestResumeWakesGetsWithoutAdvisories(t *testing.T) {
	n := startTestNode(t)
	q := openQueues(t, n, Config{Pack: 1})
	for _, sub := range q.advisories {
		if err := sub.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	putN(t, q, "jobs", 1)
	got := make(chan []queue.Task, 1)
	go func() { got <- getN(t, q, "jobs", 1, 1, 20*time.Second) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := q.Stats("jobs")
		if err != nil {
			t.Fatal(err)
		}
		if st.Consumers > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no get waiting within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := q.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	select {
	case ts := <-got:
		if len(ts) != 1 {
			t.Fatalf("got %+v, want the task", ts)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the waiting get got nothing 3s after the resume")
	}
}

// A priority level made while a pause or resume went by (it read level
// 0's state before, and the pause listed the levels before it was made)
// takes level 0's state after it is made.
func TestNewLevelMatchesLevelZero(t *testing.T) {
	n := startTestNode(t)
	q := openQueues(t, n, Config{})
	putN(t, q, "jobs", 1)
	s, err := q.open("jobs", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, paused := range []bool{true, false} {
		if err := q.SetPaused("jobs", paused); err != nil {
			t.Fatal(err)
		}
		// Made as level 0 was before the change.
		name := levelConsumer(i + 1)
		ccfg := jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy, FilterSubjects: []string{levelSubject(s.subject, i+1)}}
		if !paused {
			until := time.Now().Add(pauseFor)
			ccfg.PauseUntil = &until
		}
		if _, err := s.st.CreateConsumer(ctx, ccfg); err != nil {
			t.Fatal(err)
		}
		if err := matchLevelZero(ctx, s, name, !paused); err != nil {
			t.Fatal(err)
		}
		cons, err := s.st.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := pausedByOperator(cons.CachedInfo()); got != paused {
			t.Errorf("level %d made as level 0 was before it was paused %v: paused %v after", i+1, paused, got)
		}
	}
}
