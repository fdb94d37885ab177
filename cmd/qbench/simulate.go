package main

import (
	"fmt"
	"io"
	"time"

	"github.com/qm-dev/qm/sim"
	"github.com/spf13/cobra"
)

// Measured costs, the defaults of qbench simulate: 13 qbench fleet runs
// on this repository's 2-core machine (20 gateways, 1,000 workers, one
// node, 507 to 2,280 tasks/s), each kind of process's CPU fitted by least
// squares as a fixed load plus a cost per task (docs/SCALING.md, "Beyond
// one machine, by simulation"). Replicated: one run of 3 nodes against
// one of 1 (4 gateways, 200 workers) used 3.55 times the nodes' CPU per
// task; in the model a follower repeats the stores and acks, half the
// leader's work, so each replica costs 3.55 / 2 = 1.78 times a lone node.
const (
	measuredGatewayCost  = 148 * time.Microsecond
	measuredNodeCost     = 95 * time.Microsecond
	measuredClientCost   = 43 * time.Microsecond
	measuredReplicated   = 1.78
	measuredGatewayFixed = 0.0365 // cores, per gateway (0.73 over 20)
	measuredNodeFixed    = 0.188  // cores, per node
	measuredClientFixed  = 0.144  // cores, per 1,000 workers
)

func newSimulateCmd() *cobra.Command {
	cfg := sim.Config{}
	cmd := &cobra.Command{
		Use:   "simulate [flags]",
		Short: "Simulate qm's gateways over JetStream (package sim) and print throughput, round trip and the redelivery burst after a gateway kill",
		Long: `qbench simulate runs the seeded discrete-event simulator of package sim:
gateways, JetStream nodes (a stream per queue, its leader and followers
placed round-robin), worker goroutines (get, compute, complete) and one
producer per queue keeping --window tasks in flight. The CPU costs per task
default to those measured by qbench fleet (docs/SCALING.md).

With --shared-cores every process shares one host of that many cores (the
validation against qbench fleet on one machine); otherwise each gateway and
node has a host of its own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := sim.Run(cfg)
			if err != nil {
				return err
			}
			printSim(cmd.OutOrStdout(), &cfg, r)
			return nil
		},
		SilenceUsage: true, SilenceErrors: true,
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Gateways, "gateways", 20, "gateways")
	fl.IntVar(&cfg.Workers, "workers", 1000, "worker goroutines (Concurrency 1 each)")
	fl.IntVar(&cfg.Queues, "queues", 1, "queues, one producer each")
	fl.IntVar(&cfg.Nodes, "nodes", 1, "JetStream nodes")
	fl.IntVar(&cfg.Replicas, "replicas", 0, "replicas per stream (default min(3, nodes))")
	fl.IntVar(&cfg.Window, "window", 2000, "tasks in flight over all producers")
	fl.DurationVar(&cfg.Compute, "compute", 100*time.Millisecond, "a handler's run time")
	fl.Uint64Var(&cfg.Seed, "seed", 1, "random seed")
	fl.DurationVar(&cfg.Warmup, "warmup", 5*time.Second, "simulated time before the measurement")
	fl.DurationVar(&cfg.Duration, "duration", 15*time.Second, "simulated time measured")
	fl.DurationVar(&cfg.KillAt, "kill-at", 0, "kill the last gateway this long into the measurement (0: never)")
	fl.BoolVar(&cfg.NoHandover, "no-handover", false, "a killed gateway's workers drop their tasks, which come back after the ack wait (as before tasks could move)")
	fl.DurationVar(&cfg.AckWait, "ack-wait", 5*time.Second, "JetStream AckWait (the lease)")
	fl.IntVar(&cfg.Pack, "pack", 32, "the gateways' --pack: the most tasks of a put in one message (1: none packed; 32 is qmaster's default)")
	fl.DurationVar(&cfg.PackSpan, "pack-span", 250*time.Millisecond, "the gateways' --pack-span: packs no bigger than the gateways handing the queue's tasks out took in it lately (0: every pack --pack)")
	fl.DurationVar(&cfg.HoldFor, "hold-for", time.Second, "how long a gateway holds a pack's tasks for its own gets before it stores them again for others' (qmaster's, 1s)")
	fl.DurationVar(&cfg.Latency, "latency", 50*time.Microsecond, "one-way network latency")
	fl.IntVar(&cfg.SharedCores, "shared-cores", 0, "put every process on one host of this many cores")
	fl.IntVar(&cfg.GatewayCores, "gateway-cores", 1, "cores of each gateway's host")
	fl.IntVar(&cfg.NodeCores, "node-cores", 1, "cores of each node's host")
	fl.IntVar(&cfg.ClientCores, "client-cores", 1, "cores of each worker process's host")
	fl.IntVar(&cfg.ClientProcs, "client-procs", 0, "worker processes (default workers/1000)")
	fl.DurationVar(&cfg.Quantum, "quantum", 0, "longest an operation holds a core before the next process in line gets it (default 100µs)")
	fl.IntVar(&cfg.Threads, "threads", 1, "operations one process runs at once (its GOMAXPROCS), at most its host's cores")
	fl.DurationVar(&cfg.Costs.Gateway, "gateway-cost", measuredGatewayCost, "gateway CPU per task")
	fl.DurationVar(&cfg.Costs.Node, "node-cost", measuredNodeCost, "stream leader's CPU per task")
	fl.DurationVar(&cfg.Costs.Client, "client-cost", measuredClientCost, "worker process's CPU per task")
	fl.Float64Var(&cfg.Costs.Replicated, "replicated", measuredReplicated, "with --replicas over 1, each replica's CPU per task as a multiple of --node-cost")
	fl.Float64Var(&cfg.Costs.NodeWorkerShare, "node-worker-share", 0.5, "share of --node-cost spent on workers' calls")
	fl.Float64Var(&cfg.Costs.GatewayWorkerShare, "gateway-worker-share", 0.6, "share of --gateway-cost spent on workers' calls")
	fl.Float64Var(&cfg.Costs.GatewayFixed, "gateway-fixed", measuredGatewayFixed, "each gateway's load whatever the task rate, in cores")
	fl.Float64Var(&cfg.Costs.NodeFixed, "node-fixed", measuredNodeFixed, "each node's load whatever the task rate, in cores")
	fl.Float64Var(&cfg.Costs.ClientFixed, "client-fixed", measuredClientFixed, "each worker process's load whatever the task rate, in cores")
	fl.Float64Var(&cfg.External, "external", 0, "with --shared-cores, other programs' load on the host, in cores")
	fl.Float64SliceVar(&cfg.ExternalTrace, "external-trace", nil, "with --shared-cores, other programs' load in cores every 500ms from the measurement's start, as qbench fleet prints it (replaces --external)")
	return cmd
}

func printSim(w io.Writer, cfg *sim.Config, r *sim.Result) {
	fmt.Fprintf(w, "qbench simulate: %d gateways, %d workers, %d queues, %d nodes, window %d, compute %s, seed %d, %s measured\n\n",
		cfg.Gateways, cfg.Workers, cfg.Queues, cfg.Nodes, cfg.Window, cfg.Compute, cfg.Seed, cfg.Duration)
	fmt.Fprintf(w, "| tasks/s | RTT p50 | RTT p99 | RTT mean | put→handler p50 | p99 | gateway cores | node cores (busiest) | client cores |\n")
	fmt.Fprintf(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(w, "| %.0f | %s | %s | %s | %s | %s | %.2f | %.2f (%.2f) | %.2f |\n", r.Throughput, fmtDur(r.P50), fmtDur(r.P99), fmtDur(r.Mean),
		fmtDur(r.WaitP50), fmtDur(r.WaitP99), r.GatewayBusy, r.NodeBusy, r.MaxNode, r.ClientBusy)
	fmt.Fprintf(w, "\nhandler end to the result at the producer: p50 %s, p99 %s\n", fmtDur(r.BackP50), fmtDur(r.BackP99))
	if cfg.Pack > 1 {
		fmt.Fprintf(w, "held tasks stored again for other gateways' gets: %d\n", r.Moves)
	}
	fmt.Fprintf(w, "producers: %d loops, %.0f results per get; get p50 %s p99 %s; put p50 %s p99 %s\n", r.Loops, r.Batch,
		fmtDur(r.GetP50), fmtDur(r.GetP99), fmtDur(r.PutP50), fmtDur(r.PutP99))
	if cfg.KillAt > 0 {
		fmt.Fprintf(w, "\nkilled the last gateway at %s: %d tasks leased or held through it, %d completed through another gateway, %d redelivered\n",
			cfg.KillAt, r.Orphaned, r.Moved, len(r.Redelivered))
		fmt.Fprintf(w, "results per second of the measurement: %v\n", r.PerSecond)
		for s, c := range r.Burst(time.Second) {
			if c > 0 {
				fmt.Fprintf(w, "  %2d–%2d s after the kill: %d\n", s, s+1, c)
			}
		}
	}
}
