package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// A pull tells its consumer's messages by their ack subject, in both
// layouts JetStream uses, and no other consumer's.
func TestIsAckOf(t *testing.T) {
	next := pullPrefix + "QM_a_1.qm"
	for reply, want := range map[string]bool{
		"$JS.ACK.QM_a_1.qm.1.2.3.4.0":            true,
		"$JS.ACK.dom.hash.QM_a_1.qm.1.2.3.4.0.x": true,
		"$JS.ACK.QM_a_1.qm-p5.1.2.3.4.0":         false,
		"$JS.ACK.QM_b_1.qm.1.2.3.4.0":            false,
		"$JS.ACK.XQM_a_1.qm.1.2.3.4.0":           false,
		"_INBOX.x":                               false,
		"":                                       false,
	} {
		if got := isAckOf(reply, next); got != want {
			t.Errorf("%s: %v", reply, got)
		}
	}
}

// A message a consumer's old leader sends after its new leader's advisory
// (the old one alive, stepped down, its last messages on another route)
// is naked, so that the new leader sends it again at once: the inbox of
// the request the advisory ended is kept leaderChangeGrace. Dropped at
// once, it lost the message, which waited out AckWait. The test stands
// for the consumer's leader: it takes the pull request, and answers it
// once the request has ended and its inbox would have been dropped.
func TestOldLeadersLateMessageIsNaked(t *testing.T) {
	nc, req, naks := pullEndedByAnAdvisory(t, 10*time.Second)
	// Past a drain of the inbox: it is sent before this flush's ping.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	wantNaked(t, nc, req, naks)
}

// A request the new leader took before its advisory came is ended by the
// advisory all the same: its inbox is kept until the request expires, so
// that a message the new leader sends it after the grace is naked too.
func TestLateAnswerOfANewLeaderIsNaked(t *testing.T) {
	nc, req, naks := pullEndedByAnAdvisory(t, 3*leaderChangeGrace)
	// The new leader answers once a message comes: after the grace,
	// within the request's expiry.
	answer := time.NewTimer(leaderChangeGrace + 500*time.Millisecond)
	<-answer.C
	wantNaked(t, nc, req, naks)
}

// pullEndedByAnAdvisory sends a pull request of wait, which the test
// takes as its consumer's leader would, then ends it with an advisory of
// the consumer's new leader. It returns the request and the subscription
// that sees the naks of answers to it (test.ack: a client may not publish
// with a reply subject of JetStream's).
func pullEndedByAnAdvisory(t *testing.T, wait time.Duration) (*nats.Conn, *nats.Msg, *nats.Subscription) {
	t.Helper()
	nc, err := startTestNode(t).Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p := newPulls(nc, &handedBack{})
	t.Cleanup(p.close)
	const next = pullPrefix + "S.C"
	reqs, err := nc.SubscribeSync(next)
	if err != nil {
		t.Fatal(err)
	}
	naks, err := nc.SubscribeSync("test.ack")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := p.pull(context.Background(), next, 1, wait)
		ended <- err
	}()
	req, err := reqs.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no pull request: %v", err)
	}
	if err := nc.Publish(consumerElectedPrefix+".S.C", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, jetstream.ErrConsumerLeadershipChanged) {
			t.Fatalf("the pull ended with %v, want a leadership change", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pull did not end on the advisory")
	}
	return nc, req, naks
}

// wantNaked answers req now and checks that the answer is naked.
func wantNaked(t *testing.T, nc *nats.Conn, req *nats.Msg, naks *nats.Subscription) {
	t.Helper()
	late := nats.NewMsg(req.Reply)
	late.Reply, late.Data = "test.ack", []byte("late")
	if err := nc.PublishMsg(late); err != nil {
		t.Fatal(err)
	}
	nak, err := naks.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("the late answer was not naked: %v", err)
	}
	if nak.Subject != late.Reply || string(nak.Data) != string(nakPayload) {
		t.Fatalf("got %q on %s, want a nak on %s", nak.Data, nak.Subject, late.Reply)
	}
}

// A task JetStream delivers to an inbox no get awaits (a consumer's old
// leader answering a request the gateway gave up, after a partition) is
// naked, and that delivery is no attempt: with one attempt allowed, the
// next get hands the task out at attempt 1. Counted, it was dead-lettered
// unrun, as map's results were in a CI run of TestClusterPartition.
func TestDeliveryNakedUnseenIsNoAttempt(t *testing.T) {
	q := packQueues(t, Config{MaxAttempts: 1})
	ids := putN(t, q, "jobs", 1)
	if _, err := q.open("jobs", true); err != nil {
		t.Fatal(err)
	}
	js, err := q.cfg.Conn.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	stray, err := js.PullSubscribe("", consumerName, nats.Bind(streamName("jobs"), consumerName))
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		msgs, err := stray.Fetch(1, nats.MaxWait(5*time.Second))
		if err != nil || len(msgs) != 1 {
			t.Fatalf("round %d: fetched %d messages, %v", round, len(msgs), err)
		}
		q.pulls.received(msgs[0]) // not a request of the gateway's: naked
	}
	ts := getN(t, q, "jobs", 1, 1, 5*time.Second)
	if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 1 || ts[0].LastError != "" {
		t.Fatalf("after three deliveries naked unseen got %+v, want task %d at attempt 1", ts, ids[0])
	}
	if st, err := q.Stats(queue.DeadLetterName("jobs")); !errors.Is(err, queue.ErrUnknownQueue) && (err != nil || st.Ready != 0) {
		t.Fatalf("dead letters: %+v, %v; want none", st, err)
	}
}

// handedBack takes off a delivery's count the deliveries before it that
// were handed back, each number once; it keeps the records of the latest
// messages, and forgets the oldest generation as it fills.
func TestHandedBackKeepsTheLatest(t *testing.T) {
	var h handedBack
	ack := func(seq, delivered int) string { return fmt.Sprintf("$JS.ACK.S.C.%d.%d.1.7.0", delivered, seq) }
	at := func(seq, delivered uint64) uint64 {
		md := &nats.MsgMetadata{Stream: "S", Consumer: "C", NumDelivered: delivered, Timestamp: time.Unix(0, 7)}
		md.Sequence.Stream = seq
		return h.attempts(md)
	}
	h.add(ack(1, 1))
	h.add(ack(1, 2))
	h.add(ack(1, 2))  // the same delivery again (a deposed leader's): once
	h.add("test.ack") // not JetStream's: ignored
	if got := at(1, 3); got != 1 {
		t.Fatalf("third delivery of a message whose first two were naked: attempt %d, want 1", got)
	}
	if got := at(1, 2); got != 1 {
		t.Fatalf("second delivery: attempt %d, want 1", got)
	}
	if got := at(1, 5); got != 3 {
		t.Fatalf("fifth delivery: attempt %d, want 3", got)
	}
	if got := at(2, 2); got != 2 {
		t.Fatalf("another message's second delivery: attempt %d, want 2", got)
	}
	h.add("$JS.ACK.S.C.1.4.1.6.0") // seq 4 of a stream since deleted and made again
	if got := at(4, 2); got != 2 {
		t.Fatalf("second delivery of a message whose sequence an older one had: attempt %d, want 2", got)
	}
	h.add(ack(3, 4)) // a number its successor never counted
	if got := at(3, 4); got != 4 {
		t.Fatalf("fourth delivery, whose own number was naked before: attempt %d, want 4", got)
	}
	for seq := 2; seq <= handedBackKept; seq++ { // fills the first generation
		h.add(ack(seq, 1))
	}
	h.add(ack(1, 3)) // moved to the second, with its record
	if got := at(1, 4); got != 1 {
		t.Fatalf("after a generation: attempt %d, want 1", got)
	}
	for seq := handedBackKept + 1; seq <= 3*handedBackKept; seq++ {
		h.add(ack(seq, 1))
	}
	if got := at(1, 4); got != 4 {
		t.Fatalf("two generations later: attempt %d, want 4 (forgotten)", got)
	}
}

// A failure marked in the deliveries' record stays marked through the
// claims of later deliveries (one may be given back before it is
// dead-lettered), and marks only the message it was made for, not one at
// the same sequence of a queue deleted and made again.
func TestFailedMarkStaysWithItsMessage(t *testing.T) {
	q := packQueues(t, Config{})
	s, err := q.open("jobs", true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := q.call()
	defer cancel()
	kv, err := q.deliveries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const stored = 1796608455763789605
	token := fmt.Sprintf("$JS.ACK.%s.qm.1.1.1.%d.0", streamName("jobs"), stored)
	q.markFailed(token, "jobs", 1)
	key := deliveryKey(streamName("jobs"), 1)
	for delivered := uint64(2); delivered <= 3; delivered++ {
		hand, failed, err := q.claim(ctx, kv, s, key, delivered, stored)
		if err != nil || !hand || !failed {
			t.Fatalf("claim of delivery %d: hand %v, failed %v, %v; want both", delivered, hand, failed, err)
		}
	}
	hand, failed, err := q.claim(ctx, kv, s, key, 4, stored+1)
	if err != nil || !hand || failed {
		t.Fatalf("claim of another message at the sequence: hand %v, failed %v, %v; want handed out, not failed", hand, failed, err)
	}
}
