package jsqueue

import (
	"encoding/json"
)

// A purge or a deletion through one gateway removes the queue's messages
// from JetStream, but the other gateways hold tasks of the packs they
// pulled, to hand out later, and have tasks out to workers: without a
// word they would hand the held ones out, and their workers' results
// would be stored, for tasks the operator removed. The purging gateway
// tells every gateway (Ask, topicPurged) before it answers, and each
// drops what it holds of the messages removed, as the purging one does
// (their completions are refused).

// topicPurged is the question of a purge or deletion.
const topicPurged = "queue-purged"

// purgedNotice says that queue's messages up to sequence UpTo were
// removed; all of them, with UpTo 0 (the stream was deleted).
type purgedNotice struct {
	Queue string `json:"queue"`
	UpTo  uint64 `json:"up_to,omitempty"`
}

// tellPurged tells every gateway that queue name's messages up to upTo
// (all with 0) were removed. A gateway that does not hear it in time (cut
// off) hands out what it held of them: the purge is logged as partial.
func (q *Queues) tellPurged(name string, upTo uint64) {
	question, err := json.Marshal(purgedNotice{Queue: name, UpTo: upTo})
	if err != nil {
		return // a bug: the notice always encodes
	}
	ctx, cancel := q.call()
	defer cancel()
	if err := q.Ask(ctx, topicPurged, question, func(string, []byte) {}); err != nil {
		q.log.Warn("the other gateways were not told of a queue's purge or deletion: tasks they hold of it may still be handed out", "queue", name, "err", err)
	}
}

// answerPurged takes another gateway's purgedNotice.
func (q *Queues) answerPurged(question []byte) []byte {
	var n purgedNotice
	if err := json.Unmarshal(question, &n); err != nil || n.Queue == "" {
		q.log.Warn("another gateway's purge of a queue not decoded", "err", err)
		return nil
	}
	q.dropPurged(n.Queue, n.UpTo)
	return []byte("ok")
}

// dropPurged forgets the packs and leases of queue name whose messages
// are at or before upTo (all, with 0): those purged or deleted.
func (q *Queues) dropPurged(name string, upTo uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k, p := range q.packs {
		if k.queue == name && (upTo == 0 || k.id <= upTo) {
			q.loseLocked(p)
		}
	}
	for k, l := range q.leases {
		if k.queue != name || l.pack != nil || l.msg == nil {
			continue
		}
		if md, err := l.msg.Metadata(); upTo == 0 || err == nil && md.Sequence.Stream <= upTo {
			q.dropLease(l)
		}
	}
}
