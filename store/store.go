package store

import (
	"strconv"
	"time"
)

// Kind is the kind of an Op.
type Kind uint8

// The kinds of Op. Which Task fields each one uses is noted; the others
// are ignored.
const (
	// Add stores a new task: every field.
	Add Kind = iota + 1
	// Delete removes a task for good (ack, get without ack, purge, delete
	// of its queue): ID.
	Delete
	// Attempts records a delivery: ID, Attempts.
	Attempts
	// Requeue moves a task within its queue (a failed attempt or an undone
	// get goes back to the front, a delayed task becomes ready): ID, Seq,
	// Attempts, LastError, Due.
	Requeue
	// Move stores a task again, whole, in another queue (its dead-letter
	// queue), under the same ID: every field. It carries the whole task,
	// not only the new queue, so that replaying it never depends on an
	// earlier record.
	Move
	// Key remembers an idempotency key after its task is gone, for the
	// rest of the dedup window: Queue, Key, ID, Enqueued (when the keyed
	// put was made). An Add with a Key remembers it too. A zero Enqueued
	// forgets the key: its put was taken back (a write that failed), so
	// that a retry must add its tasks again.
	Key
	// SetPolicy sets a queue's retry policy (Op.Policy; the zero Policy
	// goes back to the master's defaults): Queue.
	SetPolicy
	// ForgetKeys forgets every idempotency key of a queue (it was
	// deleted): Queue.
	ForgetKeys
	// Deleted remembers a client's deletion of a queue, so that after a
	// restart the results of tasks put before it still go nowhere and the
	// tasks it cancelled stay cancelled: Queue, Enqueued (when it was
	// deleted), Due (when a deletion last cancelled the tasks replying to
	// it; zero if none did). A zero Enqueued forgets it.
	Deleted
)

func (k Kind) String() string {
	switch k {
	case Add:
		return "add"
	case Delete:
		return "delete"
	case Attempts:
		return "attempts"
	case Requeue:
		return "requeue"
	case Move:
		return "move"
	case Key:
		return "key"
	case SetPolicy:
		return "policy"
	case ForgetKeys:
		return "forget-keys"
	case Deleted:
		return "deleted"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Task is a task as the store keeps it.
type Task struct {
	ID        uint64
	Queue     string
	Seq       int64 // order within Queue: lower is nearer the front
	Payload   []byte
	ReplyTo   string
	Attempts  int
	LastError string
	Enqueued  time.Time
	// Due is when a delayed task, or one waiting out its retry backoff,
	// may be handed out; zero means now.
	Due time.Time
	// Priority is 0 to 9, higher first.
	Priority int
	// Key is the idempotency key the task was put with, if any.
	Key string
}

// Policy is a queue's retry policy. Zero fields mean the master's
// defaults.
type Policy struct {
	// MaxAttempts is how many deliveries a task gets before a failed one
	// is dead-lettered.
	MaxAttempts int
	// BackoffMin and BackoffMax bound the wait before a failed task is
	// delivered again: BackoffMin after the first failure, doubling with
	// each, up to BackoffMax.
	BackoffMin, BackoffMax time.Duration
}

// Op is one change to the stored tasks.
type Op struct {
	Kind   Kind
	Task   Task
	Policy Policy // SetPolicy only
}

// Ticket identifies a position in a store's stream of ops: everything
// appended up to and including the Append that returned it.
type Ticket uint64

// Meta is what Load found besides the tasks.
type Meta struct {
	// MaxID is the highest task ID ever stored; new IDs must be above it.
	MaxID uint64
	// MaxSeq is the highest Seq ever stored; new back-of-queue Seqs must be
	// above it.
	MaxSeq int64
	// Tasks is how many live tasks Load returned.
	Tasks int
	// Keys are the idempotency keys remembered (Kind Key), in no order,
	// whether or not their tasks are live; the caller drops those past
	// its dedup window.
	Keys []Task
	// Policies are the queues' retry policies, by queue name.
	Policies map[string]Policy
	// Deletions are the queues' deletions remembered (Kind Deleted), by
	// queue name; the caller drops those it no longer needs.
	Deletions map[string]Deletion
	// Paused are the queues a PauseKeeper keeps paused.
	Paused []string
	// ResultQueues are the result queues a ResultQueueKeeper keeps, by
	// task queue.
	ResultQueues map[string]string
	// Warnings says what recovery dropped (a torn tail), for the log.
	Warnings []string
}

// PauseKeeper is a Store that keeps which queues are paused, so that a
// restart does not resume them.
type PauseKeeper interface {
	// SetPaused records that the named queue is paused, or no longer
	// is; it is durable when SetPaused returns. Recording what is
	// recorded already costs nothing.
	SetPaused(queue string, paused bool) error
}

// ResultQueueKeeper is a Store that keeps, by task queue, the result
// queue its workers last named, so that after a restart the error result
// of a dead task without a reply queue goes there at once rather than
// waiting for a worker to name it again.
type ResultQueueKeeper interface {
	// SetResultQueue records that the workers of queue name resultQueue;
	// "" forgets queue's. It is durable when SetResultQueue returns.
	// Recording what is recorded already costs nothing. After a failure
	// the store keeps resultQueue in memory and writes it with the next
	// change, or at Close.
	SetResultQueue(queue, resultQueue string) error
}

// IDReserver is a Store that keeps a bound on the task IDs a master may
// have handed out. A get may take a task before its put is durable, and
// a crash then loses the put: without the bound, the master restarted
// would give that task's ID to another, and a client would see one ID
// name two tasks.
type IDReserver interface {
	// ReserveIDs records that IDs up to upTo may be in use: from then on
	// Load's Meta.MaxID is at least upTo. It is durable when it returns.
	ReserveIDs(upTo uint64) error
}

// Deletion is a queue's deletion as a Deleted op records it.
type Deletion struct {
	At       time.Time // the last deletion
	CancelAt time.Time // the last deletion that cancelled tasks; zero if none did
}

// Dumper writes the state to keep through emit: every live task as an
// Add, with its current Seq, Attempts and Due, every idempotency key still
// in its window as a Key, every queue's policy as a SetPolicy, and every
// deletion still remembered as a Deleted. A
// store calls it from its own goroutine to write a snapshot; it must take
// the same locks as the changes it reports, so that each task it emits is
// in a state that an Append has described (or will describe after the
// snapshot started).
type Dumper func(emit func(*Op) error) error

// Store keeps the queue manager's tasks durable.
//
// Append is called with queue locks held: it must not wait for I/O. Its
// ops are applied, on Load, in the order of the Append calls. Wait is
// called with no lock held and returns once everything up to the ticket
// is as durable as the store promises (for the segment log: written to
// the kernel, and fsynced if so configured).
type Store interface {
	// Load returns every live task, in no particular order, and what else
	// it found. It is called once, before any Append. The caller may keep
	// the Tasks and their Payloads.
	Load() (Meta, []Task, error)
	// Writable reports why a put would not be stored now (ErrDiskFull, a
	// write error), or nil. The queues refuse puts, and operators'
	// changes (purge, delete, drop, requeue, run-now), while it is not
	// nil; acks and results are still appended, and stored when the
	// store recovers.
	Writable() error
	// Append records ops, in order, and returns a ticket for Wait. It does
	// not keep ops or their Payloads past the call. The ops of one Append
	// are loaded all or none: a crash that cuts their write short drops
	// them all (a completion's results and its tasks' acks go together).
	Append(ops ...Op) Ticket
	// Wait blocks until every op up to t is durable, or returns the error
	// that keeps it from being so for now.
	Wait(t Ticket) error
	// SetDumper gives the store the function that dumps the live tasks,
	// for compaction. It is called after Load.
	SetDumper(d Dumper)
	// Close writes and syncs what is pending and releases the store.
	Close() error
}
