package jsqueue

import (
	"fmt"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// Delayed puts, priorities and per-queue retry policies are kept by the
// in-process queues only so far: JetStream queues refuse them with a
// clear error rather than ignore them. Idempotency keys are JetStream's
// own Nats-Msg-Id (put.go).

// errScheduling says what JetStream queues refuse.
func errScheduling(what string) error {
	return fmt.Errorf("%w: %s is not supported by queues on NATS JetStream (qmaster --nats or --cluster-*) yet", queue.ErrBadArgument, what)
}

// checkItems checks items as the in-process queues do, then refuses the
// put options JetStream queues do not keep.
func checkItems(items []queue.Item) error {
	if err := queue.CheckItems(items, time.Now()); err != nil {
		return err
	}
	for i := range items {
		switch it := &items[i]; {
		case !it.Due.IsZero():
			return errScheduling("a delayed put")
		case it.Priority != 0:
			return errScheduling("a put with a priority")
		}
	}
	return nil
}

// PeekDelayed lists no task: JetStream queues hold no delayed tasks.
func (q *Queues) PeekDelayed(name string, n int) ([]queue.Task, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: peek count must be >= 0, got %d", queue.ErrBadArgument, n)
	}
	if _, err := q.Stats(name); err != nil {
		return nil, err
	}
	return nil, nil
}

// RunNow refuses: JetStream queues hold no delayed tasks to move.
func (q *Queues) RunNow(string, []uint64) (int, error) {
	return 0, errScheduling("run-now of delayed tasks")
}

// SetPolicy refuses: the retry policy is the gateway's --max-attempts.
func (q *Queues) SetPolicy(string, queue.Policy) error {
	return errScheduling("a per-queue retry policy")
}
