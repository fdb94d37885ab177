package jsqueue

import (
	"sync"

	"github.com/nats-io/nats.go"
)

// handedBack counts, for each message, the deliveries this gateway gave
// back to JetStream without handing them to any client: a message sent
// to an inbox no get awaits any longer (pulls.received), or a get's task
// its client never received (Unget, giveBack). JetStream counts each such
// delivery, and a task's attempts are read from its delivery count; so
// after a partition healed, a consumer's old leader answering requests
// the gateway had given up, naked and sent again at once, took a result
// of map's past its last attempt within a second, and dead-lettered it
// unseen. The count is this gateway's own: a task that another gateway
// gave back and this one hands out still carries that attempt.
//
// It keeps the counts of the latest handedBackKept messages or so, in
// two generations: a count is lost only after that many others were
// handed back since, and the task then shows an attempt or more too many,
// as it did before this existed.
type handedBack struct {
	mu        sync.Mutex
	cur, prev map[deliveryRef]uint64
}

// deliveryRef names a message of a consumer: deliveries are counted per
// consumer (a queue's priorities each have one).
type deliveryRef struct {
	stream, consumer string
	seq              uint64
}

// handedBackKept bounds the messages whose counts handedBack keeps, per
// generation.
const handedBackKept = 1 << 14

// add counts a delivery of the message whose ack subject is reply as
// handed back unseen. A subject that is not JetStream's is ignored.
func (h *handedBack) add(reply string) {
	tok, ok := parseToken(reply)
	if !ok {
		return
	}
	ref := deliveryRef{tok.stream, tok.consumer, tok.seq}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cur == nil || len(h.cur) >= handedBackKept {
		h.prev, h.cur = h.cur, make(map[deliveryRef]uint64)
	}
	n, ok := h.cur[ref]
	if !ok {
		n = h.prev[ref]
		delete(h.prev, ref)
	}
	h.cur[ref] = n + 1
}

// attempts returns the attempt a delivery described by md stands for:
// JetStream's count of its deliveries less those this gateway handed back
// unseen, and at least 1.
func (h *handedBack) attempts(md *nats.MsgMetadata) uint64 {
	delivered := md.NumDelivered
	if delivered <= 1 {
		return delivered
	}
	ref := deliveryRef{md.Stream, md.Consumer, md.Sequence.Stream}
	h.mu.Lock()
	back, ok := h.cur[ref]
	if !ok {
		back = h.prev[ref]
	}
	h.mu.Unlock()
	if back >= delivered {
		return 1
	}
	return delivered - back
}
