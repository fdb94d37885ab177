// Package jsqueue keeps qm's queues in NATS JetStream, so that any number
// of stateless qmaster gateways serve the same queues and a replicated
// stream, not one process, holds every task. It implements master.Queues
// with package queue's request and task types; nothing about JetStream
// reaches the wire protocol or the workers.
//
// The mapping, in short (docs/SCALING.md has it whole):
//
//   - A queue is a stream with work-queue retention and one durable pull
//     consumer, named after the queue (see streamName). A task is a
//     message; its ID is the stream sequence it was first stored at.
//   - A get is a pull; the gateway holds the delivered message as the
//     lease, with the lease's deadline, and keeps JetStream's ack timer
//     alive (InProgress) while the lease lasts, so a lease may be longer
//     or shorter than the consumer's AckWait. If the gateway dies,
//     JetStream redelivers its tasks once AckWait runs out.
//   - An ack is a double ack (the gateway waits until JetStream has
//     stored it); a nack or an expired lease is a nak, and the task is
//     redelivered ahead of newer ones. The gateway counts attempts from
//     JetStream's delivery count and moves a task that used its last one
//     to the queue's dead-letter queue, another stream.
//   - A completion is taken only for the delivery it names: a late
//     completion of a superseded delivery is refused, which JetStream
//     alone would accept. A worker whose gateway died completes, renews
//     or fails its tasks through another, by their delivery's token
//     (handover.go).
//   - With Config.Pack (qmaster's default, 32), a put's tasks are stored
//     up to Pack to a message, and handed out one by one by the gateway
//     that fetches it (pack.go): one JetStream write, delivery and ack
//     for many tasks. Their tokens, records and counts are in
//     packhandover.go, packrecord.go and packcount.go.
package jsqueue
