// Package queue holds the master's named task queues: delivery by
// priority, FIFO within one, leases with deadlines, acks, retries and
// dead-letter queues, delayed tasks.
//
// It knows nothing of the network. The server calls a [Manager] with
// request structs: Put ([PutRequest]) and Get ([GetRequest]), which may
// block, bounded by their ctx; Ack ([AckRequest]), Nack and Extend;
// Unget for tasks a reply could not carry; Release when a client
// disconnects; and [Manager.ReapLeases] in one goroutine it owns, which
// expires leases as they run out.
//
// The files follow the concerns: manager.go (the Manager's lifecycle and
// its queues), queue.go (one queue: push, take, requeue), ready.go and
// deque.go (the ready tasks, one deque per priority), delay.go (tasks not
// yet due), put.go, dedup.go (idempotency keys and request IDs), get.go,
// ack.go, reap.go (lease expiry, Release and GiveBack), lease.go and
// waiter.go (the indexes of leases and of blocked calls), admin.go and
// operator.go (what operators see and do), policy.go (retry policies),
// deletions.go (deleted queues remembered), name.go (valid names), and
// persist.go.
//
// # Persistence
//
// Every change of a queue is recorded, under the queue's lock, in its
// journal (persist.go): with a [Config.Store] that is the store's log;
// without one, a journal that does nothing. So each operation has one
// path. A put becomes durable in Put, which waits, with no lock held, for
// the ticket its journal's commit returned; acks, purges, drops and
// requeues wait likewise, while deliveries and requeues after a failure
// are not waited for (a crash loses only an attempt count). The store's
// own locking contract is in package store.
//
// # Locking
//
// Every method is safe for concurrent use. Each queue has its own mutex;
// no lock is held while a Get or Put waits, and OnDead and
// AckRequest.Publish are never called with a lock held.
//
// Payload and ReplyTo slices passed to Put are kept as they are, not
// copied: the caller hands them over and must not modify them afterwards.
// Tasks returned by Get, Ack and Peek share those payload bytes; treat them
// as read-only.
package queue
