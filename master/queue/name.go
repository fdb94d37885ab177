package queue

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest queue name, in bytes, a client may create.
// A dead-letter queue's name may be longer by len(DeadSuffix).
const MaxNameLen = 255

// DeadSuffix ends the name of every dead-letter queue.
const DeadSuffix = ".dead"

// DeadLetterName returns the name of queue's dead-letter queue.
func DeadLetterName(queue string) string { return queue + DeadSuffix }

// IsDeadLetterName reports whether name is a dead-letter queue's name; such
// a queue has no dead-letter queue of its own.
func IsDeadLetterName(name string) bool { return strings.HasSuffix(name, DeadSuffix) }

// CheckName returns ErrBadQueueName, saying why, unless name is a valid
// queue name: not empty, at most MaxNameLen bytes (plus len(DeadSuffix)
// for a dead-letter queue), valid UTF-8 without control characters.
func CheckName(name string) error {
	limit := MaxNameLen
	if IsDeadLetterName(name) {
		limit += len(DeadSuffix)
	}
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrBadQueueName)
	case len(name) > limit:
		return fmt.Errorf("%w: %d bytes, more than %d", ErrBadQueueName, len(name), limit)
	}
	for i := 0; i < len(name); {
		b := name[i]
		if b < utf8.RuneSelf {
			if b < 0x20 || b == 0x7f {
				return fmt.Errorf("%w: a control character at byte %d", ErrBadQueueName, i)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(name[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return fmt.Errorf("%w: not UTF-8 at byte %d", ErrBadQueueName, i)
		case unicode.IsControl(r):
			return fmt.Errorf("%w: a control character at byte %d", ErrBadQueueName, i)
		}
		i += size
	}
	return nil
}
