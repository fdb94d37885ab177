package jsqueue

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Stream and subject names allow fewer characters than queue names (no
// dots, spaces, wildcards; at most 255 bytes), so each queue's stream is
// named by a readable prefix of the queue's name and a hash of all of it.
// The queue's own name is kept in the stream's metadata.
const (
	streamPrefix  = "QM_"
	subjectPrefix = "qm.q."
	consumerName  = "qm"
	metaQueueName = "qm.queue"
)

// Message headers, set only when they differ from what the stream itself
// tells (a plain put carries none).
const (
	hdrID       = "Qm-Id"       // the task's ID, when the message is not where it was first put
	hdrReplyTo  = "Qm-Reply-To" // the queue for the task's result
	hdrEnqueued = "Qm-Enqueued" // RFC 3339 nano time of the first put, when moved
	hdrAttempts = "Qm-Attempts" // deliveries before a move to or from a dead-letter queue
	hdrError    = "Qm-Error"    // last error, when moved
)

// streamName returns the JetStream stream name of queue name.
func streamName(name string) string {
	return streamPrefix + token(name)
}

// subject returns the subject the tasks of queue name are published on.
func subject(name string) string {
	return subjectPrefix + token(name)
}

// token is name's readable part, letters, digits, '-' and '_' of its
// first 32 bytes, then 16 hex digits of its SHA-256: unique for practical
// purposes and valid in stream names and subjects.
func token(name string) string {
	var b strings.Builder
	for i := 0; i < len(name) && b.Len() < 32; i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(name))
	b.WriteByte('_')
	b.WriteString(hex.EncodeToString(sum[:8]))
	return b.String()
}
