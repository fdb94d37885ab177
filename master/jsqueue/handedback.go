package jsqueue

import (
	"slices"
	"sync"

	"github.com/nats-io/nats.go"
)

// handedBack records, for each message, the deliveries this gateway gave
// back to JetStream without handing them to any client: a message sent
// to an inbox no get awaits any longer (pulls.received), or a get's task
// its client never received (Unget). JetStream counts each such delivery,
// and a task's attempts are read from its delivery count; so after a
// partition healed, a consumer's old leader answering requests the
// gateway had given up, naked and sent again at once, took a result of
// map's past its last attempt within a second, and dead-lettered it
// unseen. The record is this gateway's own: a task that another gateway
// gave back and this one hands out still carries that attempt.
//
// It keeps the delivery numbers, not a count: a consumer's deposed leader
// may still send a message under a number its successor has not counted,
// or send it twice, and only the numbers below a delivery's own are taken
// off it. It keeps those of the latest handedBackKept messages or so, in
// two generations: a record is lost only after that many other messages
// were handed back since, and the task then shows an attempt or more too
// many, as it did before this existed.
type handedBack struct {
	mu        sync.Mutex
	cur, prev map[deliveryRef][]uint64
}

// deliveryRef names a message of a consumer: deliveries are counted per
// consumer (a queue's priorities each have one). Its stored time tells it
// from the message at the same sequence of a queue deleted and made again.
type deliveryRef struct {
	stream, consumer string
	seq              uint64
	stored           int64
}

const (
	// handedBackKept bounds the messages handedBack keeps, per generation.
	handedBackKept = 1 << 14
	// handedBackPerMsg bounds the delivery numbers kept of one message.
	handedBackPerMsg = 16
)

// add records the delivery whose ack subject is reply as handed back
// unseen. A subject that is not JetStream's is ignored.
func (h *handedBack) add(reply string) {
	tok, ok := parseToken(reply)
	if !ok {
		return
	}
	ref := deliveryRef{tok.stream, tok.consumer, tok.seq, tok.stored}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cur == nil || len(h.cur) >= handedBackKept {
		h.prev, h.cur = h.cur, make(map[deliveryRef][]uint64)
	}
	ns, ok := h.cur[ref]
	if !ok {
		ns = h.prev[ref]
		delete(h.prev, ref)
	}
	if !slices.Contains(ns, tok.delivered) && len(ns) < handedBackPerMsg {
		ns = append(ns, tok.delivered)
	}
	h.cur[ref] = ns
}

// attempts returns the attempt a delivery described by md stands for:
// JetStream's count of its deliveries less those before it that this
// gateway handed back unseen, and at least 1.
func (h *handedBack) attempts(md *nats.MsgMetadata) uint64 {
	delivered := md.NumDelivered
	if delivered <= 1 {
		return delivered
	}
	ref := deliveryRef{md.Stream, md.Consumer, md.Sequence.Stream, md.Timestamp.UnixNano()}
	h.mu.Lock()
	ns, ok := h.cur[ref]
	if !ok {
		ns = h.prev[ref]
	}
	var back uint64
	for _, n := range ns {
		if n < delivered {
			back++
		}
	}
	h.mu.Unlock()
	return delivered - min(back, delivered-1)
}
