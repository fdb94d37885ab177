// Package queue holds the master's named in-memory task queues: FIFO delivery,
// leases with deadlines, acks, retries and dead-letter queues.
//
// It knows nothing of the network. The server calls a [Manager]: Put and Get
// (which may block, bounded by their ctx), Ack, Nack, Extend, Release when a
// client disconnects, and ExpireLeases from one reaper goroutine that sleeps
// until [Manager.NextDeadline] or until [Manager.LeaseChanged] fires:
//
//	for {
//		d, ok := m.NextDeadline()
//		// arm a timer for d (or none if !ok), then wait on it,
//		// on m.LeaseChanged() and on shutdown; on the timer:
//		m.ExpireLeases(time.Now())
//	}
//
// Every method is safe for concurrent use. Each queue has its own mutex; no
// lock is held while a Get or Put waits, and OnDead is never called with a
// lock held.
//
// Payload and ReplyTo slices passed to Put are kept as they are, not copied:
// the caller hands them over and must not modify them afterwards. Tasks
// returned by Get, Ack and Peek share those payload bytes; treat them as
// read-only.
package queue
