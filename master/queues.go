package master

import (
	"context"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// Queues is everything the server asks of its queues: the calls of
// native and Python clients, the operators' views and actions, and the
// lease reaper. *queue.Manager implements it in this process; another
// implementation, such as a gateway to a replicated engine, can sit
// behind it, speaking in package queue's request and task types.
//
// The server passes each client connection's ID as the owner of the
// leases that connection takes, and calls Release(owner) when it drops.
type Queues interface {
	// Put adds tasks (or, with Results, results) to a queue.
	Put(ctx context.Context, req queue.PutRequest) ([]uint64, error)
	// Get takes tasks, into dst's array when it is large enough.
	Get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error)
	// Unget puts back tasks a Get for req took but could not deliver.
	Unget(req queue.GetRequest, ts []queue.Task)
	// Ack ends leases of tasks that succeeded, publishing their results
	// through req.Publish before the acks are stored.
	Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error)
	// Nack ends a failed attempt.
	Nack(req queue.NackRequest) error
	// Extend renews leases.
	Extend(queue string, owner uint64, ids []uint64, lease time.Duration) error
	// Release gives back every lease of an owner that went away.
	Release(owner uint64) int
	// LeasedBy counts an owner's leases.
	LeasedBy(owner uint64) int
	// ReapLeases expires leases as they run out, and makes delayed tasks
	// ready as they fall due, until done is closed.
	ReapLeases(done <-chan struct{}, onExpired func(queue string, n int))

	// Stats, AllStats, Queues, Peek and Leases are what operators see.
	Stats(queue string) (queue.Stats, error)
	AllStats() ([]queue.Stats, error)
	Queues() ([]string, error)
	Peek(queue string, n int) ([]queue.Task, error)
	PeekDelayed(queue string, n int) ([]queue.Task, error)
	Leases() map[uint64][]queue.LeaseInfo

	// Purge, Delete, SetPaused, Requeue, Drop, RunNow and SetPolicy are
	// what operators do.
	Purge(queue string) (int, error)
	Delete(queue string) error
	SetPaused(queue string, paused bool) error
	Requeue(queue string, ids []uint64) (int, error)
	Drop(queue string, ids []uint64) (int, error)
	RunNow(queue string, ids []uint64) (int, error)
	SetPolicy(queue string, p queue.Policy) error

	// Close ends every blocked call with queue.ErrClosed.
	Close()
}

var _ Queues = (*queue.Manager)(nil)

// GiveBacker is implemented by Queues that can give a client's leased
// tasks back unattempted (queue.Manager): a master stopping gracefully
// does so for its workers' tasks, so that a restart uses up no attempt.
type GiveBacker interface {
	// GiveBack puts owner's leased tasks back in the order handed out,
	// attempts unused, and returns how many.
	GiveBack(owner uint64) int
}

var _ GiveBacker = (*queue.Manager)(nil)

// DeliveryExtender is implemented by Queues whose deliveries another
// server may have handed out (a gateway of a cluster): a worker whose
// gateway died renews through the next one the leases of the tasks it
// still runs, naming each by its token.
type DeliveryExtender interface {
	// ExtendDeliveries renews the deliveries of ids, named by tokens
	// (queue.Task.Token), which another server handed out.
	ExtendDeliveries(queue string, ids []uint64, tokens []string) error
}

// DeletionKeeper is implemented by Queues that keep the deletions of
// queues across a restart (a data directory; a cluster's engine): the
// server remembers each deletion (deletedQueues) so that the results of
// tasks put before it go nowhere and the tasks it cancelled stay so.
type DeletionKeeper interface {
	// KeepDeletion stores name's deletion as the server now remembers it.
	KeepDeletion(name string, d queue.Deletion) error
	// Deletions returns the deletions kept within queue.DeletionKept.
	Deletions() (map[string]queue.Deletion, error)
}

// ResultQueueKeeper is implemented by Queues that keep, across a restart,
// the result queue each task queue's workers last named (queue.Manager,
// with a data directory), so that the error result of a task
// dead-lettered at start-up, with no reply queue, goes there at once
// rather than waiting in memory for a worker to name it again.
type ResultQueueKeeper interface {
	// KeepResultQueue stores that the workers of queue name
	// resultQueue; "" forgets queue's. It returns once that is durable,
	// or the error that kept it from being so.
	KeepResultQueue(queue, resultQueue string) error
	// ResultQueues hands over the result queues kept, by task queue, as
	// the queues were opened.
	ResultQueues() map[string]string
	// KeepsResultQueues reports whether they are kept at all (not in
	// memory alone).
	KeepsResultQueues() bool
}

var _ ResultQueueKeeper = (*queue.Manager)(nil)

// DeletionWatcher is implemented by DeletionKeepers shared by several
// servers (a cluster's gateways), so that one that missed another's
// notice of a deletion learns it all the same.
type DeletionWatcher interface {
	// WatchDeletions calls learn with each deletion kept, those kept
	// already and those kept later, until ctx ends, and caughtUp each
	// time it has had those kept already.
	WatchDeletions(ctx context.Context, learn func(name string, d queue.Deletion), caughtUp func())
}

// ItemLimiter is implemented by Queues whose engine bounds the size of
// one item (a gateway of a cluster: NATS's max_payload). A result over
// it would fail its whole completion, whose other tasks would run again
// for nothing; the server stores an error result for that task instead.
type ItemLimiter interface {
	// MaxItem is the most bytes one item (a task, or an encoded result)
	// may have; 0 is no bound.
	MaxItem() int
}

// DeliveryConfirmer is implemented by Queues that take a NoAck get's
// tasks for good only once the reply carrying them is written, so that a
// reply that is lost puts them back where they were. The server calls
// Delivered after writing such a reply; if the write fails it calls
// Unget, as for any get. The in-process queues take NoAck tasks at once
// and put them back themselves; they do not implement it, so a
// single master does no work for it.
type DeliveryConfirmer interface {
	// Delivered says that ts, taken by a NoAck Get for req, reached the
	// client (as far as the server can tell: its reply was written).
	Delivered(req queue.GetRequest, ts []queue.Task)
}
