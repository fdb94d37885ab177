// Package store is the persistence interface of the master's queues.
//
// The queue manager (package master/queue) describes every change to its
// tasks as an [Op] and hands it to a [Store] in the order the changes
// happen; the store makes them durable and, after a restart, gives back
// the live tasks through [Store.Load]. Ops name tasks by their ID (unique
// for the life of a data directory) and carry absolute values, never
// increments, so replaying an op twice, or over a snapshot taken after it,
// gives the same state.
//
// The store knows nothing of leases, getters or max lengths: a leased task
// is stored as a task with its raised attempt count and comes back ready.
// The order of the tasks of one queue is given by [Task.Seq]: a task put
// at the back gets a sequence number above every other, one pushed back to
// the front (a nack, an expired lease) one below the queue's head.
//
// The implementation in this repository is [github.com/qm-dev/qm/store/seglog],
// an append-only segment log with snapshots. The interface is small so that
// a backend on a distributed engine can replace it without touching queue
// semantics: Append is an ordered stream of ops (a JetStream stream, a Redis
// stream), Load is a replay of it.
package store
