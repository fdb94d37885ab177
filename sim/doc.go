// Package sim is a seeded discrete-event simulator of qm on NATS
// JetStream (docs/SCALING.md): stateless gateways (qmaster --nats),
// JetStream nodes holding one stream per queue with its leader on one node
// and its replicas on others, worker goroutines doing get, compute,
// complete under leases, and one producer per queue keeping a window of
// tasks in flight.
//
// Every process is a server of CPU: an operation costs a measured CPU
// time (Costs) and runs on one of the process's threads, and a thread
// runs only on a free core of its host. Processes share a host's cores
// round-robin, one operation at a time, as the kernel shares them among
// qm's single-threaded processes. Messages between processes take a fixed
// network latency. The same Config and Seed give the same Result.
//
// With Config.Pack a put's tasks are stored up to Pack to a message, as
// qmaster --nats packs them: a gateway whose get fetches a pack hands its
// other tasks to its own next gets (held), and stores again those held
// HoldFor for other gateways' gets waiting at the stream. Its pull
// requests stand each for as many gets as its messages carried tasks
// lately. With Config.PackSpan packs follow the gateways: every second
// each gateway says what its gets took of a queue in PackSpan at their
// recent rate, and puts pack no bigger than the least size said.
//
// A gateway can be killed: its workers reconnect to another gateway after
// a reconnect delay and complete there the task each was running, as qm's
// workers do (with Config.NoHandover they drop it, as qm's did before).
// Tasks it had leased or held that no worker completes come back to the
// front of their queue when JetStream's AckWait runs out after their
// last renewal (the gateway renews every third of AckWait).
//
// The files follow the jobs: config.go the inputs, event.go the clock and
// event heap, cpu.go hosts and processes, model.go gateways, nodes,
// streams, workers and producers, result.go the outputs.
package sim
