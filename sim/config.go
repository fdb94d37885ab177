package sim

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Costs are the CPU times of each process's operations, measured by qbench
// fleet (docs/SCALING.md). A task's costs are charged where its
// operations happen: a worker's call (complete the last task, get the
// next), the producer's put and its get of results.
type Costs struct {
	// Gateway is a gateway's CPU per task, over all of its operations.
	Gateway time.Duration
	// GatewayWorkerShare is the part of Gateway spent on workers' calls
	// (half on the request, half on the reply); the rest goes to the
	// producer's put and get of results, half each. Default 0.6.
	GatewayWorkerShare float64
	// Node is a stream leader's CPU per task: it stores the task and its
	// result, delivers both and deletes both when acked.
	Node time.Duration
	// NodeWorkerShare is the part of Node spent on workers' calls (two
	// thirds on storing the result and the ack, a third on the get); of
	// the rest a third goes to the put, two thirds to the get of results.
	// Default 0.5: one message stored, delivered and acked each way.
	NodeWorkerShare float64
	// Replicated is, with Replicas > 1, the multiple of Node (measured
	// with one replica) that the leader's operations cost; each follower
	// repeats the stores and acks (not the deliveries) at that cost too.
	// Default 1. Raft and the routes between nodes cost more than the copy
	// itself.
	Replicated float64
	// Client is the worker-and-producer process's CPU per task: a worker's
	// call and its handler's bookkeeping, and the producer's share. Half
	// goes to the worker's call, half to the producer.
	Client time.Duration
	// GatewayFixed, NodeFixed and ClientFixed are each process's load in
	// cores whatever the task rate (timers, heartbeats, lease renewals),
	// charged in 1 ms slices every 10 ms.
	GatewayFixed, NodeFixed, ClientFixed float64
}

// Config is one simulated run. Zero values mean the defaults.
type Config struct {
	// Gateways, Workers, Queues and Nodes size the system; default 1 each.
	Gateways, Workers, Queues, Nodes int
	// Replicas keep each queue's stream; default min(3, Nodes). The
	// leaders of the queues' streams go round-robin over the nodes, each
	// queue's followers on the next nodes.
	Replicas int
	// Window is the number of tasks in flight, over all producers (one per
	// queue); default 2 × Workers.
	Window int
	// Compute is how long a worker's handler takes (it uses no CPU of the
	// modelled processes: it sleeps in the validation).
	Compute time.Duration
	// Costs are the operations' CPU times.
	Costs Costs
	// SharedCores > 0 puts every process on one host with that many cores,
	// as on the machine of the validation. Otherwise each gateway and each
	// node has a host of its own with GatewayCores and NodeCores (default
	// 1), and the workers are spread over ClientProcs processes (default
	// Workers/1000, at least 1), each alone on a host of ClientCores.
	SharedCores                                       int
	GatewayCores, NodeCores, ClientCores, ClientProcs int
	// External is the load of other programs on the shared host, in
	// cores, run in slices of ExternalSlice (default 3ms, about a Linux
	// time slice on a busy 2-core machine). Only with SharedCores.
	External      float64
	ExternalSlice time.Duration
	// ExternalTrace, if not empty, replaces External by a measured trace
	// (qbench fleet's): the load in cores during each ExternalPeriod
	// (default 500ms) from the start of the measurement; the warmup gets
	// the trace's mean, and the last value holds after its end.
	ExternalTrace  []float64
	ExternalPeriod time.Duration
	// Quantum is the longest an operation holds a core before the next in
	// line gets it; longer ones are cut in pieces of Quantum. Default
	// 100µs, about the work of one message; negative never cuts.
	Quantum time.Duration
	// Threads is how many operations one process runs at once, at most
	// its host's cores; default 1 (qm's GOMAXPROCS=1 on a busy host).
	Threads int
	// Latency is the one-way network delay of every message; default
	// 50µs.
	Latency time.Duration
	// Warmup runs before the Duration that is measured; default 5s and
	// 15s.
	Warmup, Duration time.Duration
	// KillAt, if positive, kills the last gateway that long into the
	// measurement.
	KillAt time.Duration
	// AckWait is JetStream's ack timeout, the lease; default 5s (qbench
	// fleet's --lease).
	AckWait time.Duration
	// ReconnectMin is a worker's first reconnect delay after its gateway
	// dies; it waits a uniform draw in [ReconnectMin, 2×ReconnectMin).
	// Default 100ms, as the worker package.
	ReconnectMin time.Duration
	// NoHandover models workers that drop the task they were running when
	// their gateway died, as qm's did before a task could move to another
	// gateway: it comes back when AckWait runs out. By default a worker
	// completes it through the gateway it reconnects to, once its handler
	// is done, if it was not redelivered meanwhile.
	NoHandover bool
	// ResultBatch is the most results one get of the producer takes;
	// default 1000.
	ResultBatch int
	// Pack is the most tasks of one put stored in one message (qmaster's
	// --pack); default 1, none packed. A gateway that fetches a pack for
	// a get holds the pack's other tasks for its next gets; those held
	// HoldFor (default 1s) are stored again alone at the end of their
	// queue if another gateway's gets wait at the stream, as qmaster
	// --nats does.
	Pack    int
	HoldFor time.Duration
	// PackSpan, if over 0, makes packs follow the gateways' gets, as
	// qmaster's --pack-span: every second each gateway says a pack size,
	// what its gets took of the queue in PackSpan at their recent rate
	// (or its waiting gets want, if more), and puts pack no bigger than
	// the least size said. 0 keeps every pack at Pack.
	PackSpan time.Duration
	// Seed seeds the random choices (which gateway a worker dials).
	Seed uint64
}

func (c *Config) setDefaults() {
	one := func(v *int) {
		if *v == 0 {
			*v = 1
		}
	}
	for _, v := range []*int{&c.Gateways, &c.Workers, &c.Queues, &c.Nodes, &c.GatewayCores, &c.NodeCores, &c.ClientCores, &c.Threads} {
		one(v)
	}
	if c.Replicas == 0 {
		c.Replicas = min(3, c.Nodes)
	}
	if c.Window == 0 {
		c.Window = 2 * c.Workers
	}
	if c.ClientProcs == 0 {
		c.ClientProcs = max(1, c.Workers/1000)
	}
	if c.Costs.GatewayWorkerShare == 0 {
		c.Costs.GatewayWorkerShare = 0.6
	}
	if c.Costs.Replicated == 0 {
		c.Costs.Replicated = 1
	}
	if c.Costs.NodeWorkerShare == 0 {
		c.Costs.NodeWorkerShare = 0.5
	}
	if c.Latency == 0 {
		c.Latency = 50 * time.Microsecond
	}
	if c.Warmup == 0 {
		c.Warmup = 5 * time.Second
	}
	if c.Duration == 0 {
		c.Duration = 15 * time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 5 * time.Second
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 100 * time.Millisecond
	}
	if c.ExternalPeriod == 0 {
		c.ExternalPeriod = 500 * time.Millisecond
	}
	if c.Quantum == 0 {
		c.Quantum = 100 * time.Microsecond
	}
	if c.ExternalSlice == 0 {
		c.ExternalSlice = 3 * time.Millisecond
	}
	if c.ResultBatch == 0 {
		c.ResultBatch = 1000
	}
	if c.Pack == 0 {
		c.Pack = 1
	}
	if c.HoldFor == 0 {
		c.HoldFor = time.Second
	}
}

// Validate reports the first invalid field of c, by name.
func (c *Config) Validate() error {
	for name, v := range map[string]int{"Gateways": c.Gateways, "Workers": c.Workers, "Queues": c.Queues, "Nodes": c.Nodes,
		"Replicas": c.Replicas, "Window": c.Window, "SharedCores": c.SharedCores, "GatewayCores": c.GatewayCores,
		"NodeCores": c.NodeCores, "ClientCores": c.ClientCores, "ClientProcs": c.ClientProcs, "Threads": c.Threads, "ResultBatch": c.ResultBatch, "Pack": c.Pack} {
		if v < 0 {
			return fmt.Errorf("sim config: %s must not be negative", name)
		}
	}
	switch {
	case c.Replicas > c.Nodes && c.Nodes > 0:
		return fmt.Errorf("sim config: Replicas %d is more than the %d Nodes", c.Replicas, c.Nodes)
	case c.Window > 0 && c.Window < c.Queues:
		return errors.New("sim config: Window must be at least Queues (one task per producer)")
	case c.Compute < 0 || c.Latency < 0 || c.Warmup < 0 || c.Duration < 0 || c.KillAt < 0 || c.AckWait < 0 || c.ReconnectMin < 0 || c.HoldFor < 0 || c.PackSpan < 0:
		return errors.New("sim config: durations must not be negative")
	case c.HoldFor > 0 && c.HoldFor < time.Millisecond:
		return errors.New("sim config: HoldFor must be at least 1ms")
	case c.KillAt > 0 && c.Gateways == 1:
		return errors.New("sim config: KillAt needs at least 2 Gateways")
	case c.Costs.Gateway < 0 || c.Costs.Node < 0 || c.Costs.Client < 0 || c.Costs.Replicated < 0 ||
		c.Costs.GatewayFixed < 0 || c.Costs.NodeFixed < 0 || c.Costs.ClientFixed < 0 || c.External < 0 || c.ExternalSlice < 0 ||
		slices.ContainsFunc(c.ExternalTrace, func(v float64) bool { return v < 0 }):
		return errors.New("sim config: costs must not be negative")
	case c.Costs.GatewayWorkerShare < 0 || c.Costs.GatewayWorkerShare > 1 || c.Costs.NodeWorkerShare < 0 || c.Costs.NodeWorkerShare > 1:
		return errors.New("sim config: Costs.GatewayWorkerShare and NodeWorkerShare must be within [0, 1]")
	}
	return nil
}
