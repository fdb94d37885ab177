package sim

import (
	"math"
	"reflect"
	"testing"
	"time"
)

// within fails t unless got is within tol (a fraction) of want.
func within(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol*want {
		t.Errorf("%s = %.4g, want %.4g ±%.0f%%", what, got, want, tol*100)
	}
}

func run(t *testing.T, cfg Config) *Result {
	t.Helper()
	r, err := Run(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// measured is a topology like the validation's, with the measured costs,
// small enough to run in a moment.
func measured() Config {
	return Config{
		Gateways: 4, Workers: 200, Queues: 2, Window: 400, Compute: 20 * time.Millisecond, SharedCores: 2,
		Costs:  Costs{Gateway: 200 * time.Microsecond, Node: 100 * time.Microsecond, Client: 60 * time.Microsecond, GatewayFixed: 0.02},
		Warmup: 500 * time.Millisecond, Duration: 1500 * time.Millisecond, Seed: 7,
	}
}

func TestSameSeedSameResult(t *testing.T) {
	cfg := measured()
	cfg.KillAt, cfg.AckWait = 500*time.Millisecond, time.Second
	a, b := run(t, cfg), run(t, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("same seed, different results:\n%+v\n%+v", a, b)
	}
	cfg.Seed++
	if c := run(t, cfg); reflect.DeepEqual(a.rtts, c.rtts) {
		t.Error("another seed gave the very same round trips")
	}
}

// One gateway that costs 1 ms per worker call, and nothing else that
// costs: it saturates at 1,000 tasks/s, and is busy all the time.
func TestOneServerSaturatesAtOneOverCost(t *testing.T) {
	r := run(t, Config{
		Workers: 50, Window: 100, Costs: Costs{Gateway: time.Millisecond, GatewayWorkerShare: 1},
		Latency: time.Microsecond, Warmup: time.Second, Duration: 4 * time.Second,
	})
	within(t, "tasks/s", r.Throughput, 1000, 0.01)
	within(t, "gateway cores", r.GatewayBusy, 1, 0.01)
}

// Two such gateways on two cores do twice as much; on one shared core,
// the same as one.
func TestCoresBound(t *testing.T) {
	cfg := Config{
		Gateways: 2, Workers: 50, Window: 100, Costs: Costs{Gateway: time.Millisecond, GatewayWorkerShare: 1},
		Latency: time.Microsecond, Warmup: time.Second, Duration: 4 * time.Second, Seed: 3,
	}
	within(t, "tasks/s, 2 hosts", run(t, cfg).Throughput, 2000, 0.03)
	cfg.SharedCores = 1
	within(t, "tasks/s, 1 shared core", run(t, cfg).Throughput, 1000, 0.01)
}

// With no CPU cost, workers bound the rate: W / (compute + the call's
// six network hops), and the round trip is that of a window of W tasks.
func TestWorkerBound(t *testing.T) {
	r := run(t, Config{
		Workers: 10, Window: 10, Compute: 100 * time.Millisecond, Latency: 100 * time.Microsecond,
		Warmup: time.Second, Duration: 10 * time.Second,
	})
	within(t, "tasks/s", r.Throughput, 10/0.1006, 0.01)
	if r.P50 < 100*time.Millisecond || r.P99 > 110*time.Millisecond {
		t.Errorf("round trip p50 %s, p99 %s: want just over the 100ms compute", r.P50, r.P99)
	}
}

// Little's law: the tasks in flight (the window) are the rate times the
// mean round trip.
func TestLittlesLaw(t *testing.T) {
	for _, window := range []int{100, 400, 1000} {
		cfg := measured()
		cfg.Window = window
		r := run(t, cfg)
		within(t, "window/tasks per s", r.Mean.Seconds(), float64(window)/r.Throughput, 0.03)
	}
}

// With NoHandover, a killed gateway's leases come back between 2/3 and 1
// AckWait after the kill (the last renewal was at most a third of AckWait
// before it), and its workers go on through the other gateway.
func TestKillRedeliversAfterAckWait(t *testing.T) {
	cfg := killConfig()
	cfg.NoHandover = true
	r := run(t, cfg)
	if r.Orphaned < 5 || len(r.Redelivered) != r.Orphaned {
		t.Fatalf("%d tasks orphaned, %d redelivered: want several, all redelivered", r.Orphaned, len(r.Redelivered))
	}
	for _, d := range r.Redelivered {
		if d < 2*time.Second || d > 3*time.Second+10*time.Millisecond {
			t.Errorf("redelivered %s after the kill, want within [2s, 3s]", d)
		}
	}
	// Workers all back at work: the rate after the burst is the rate
	// before it.
	within(t, "tasks/s", r.Throughput, 40/0.2, 0.05)
}

func killConfig() Config {
	return Config{
		Gateways: 2, Workers: 40, Window: 80, Compute: 200 * time.Millisecond,
		Costs:  Costs{Gateway: 50 * time.Microsecond, Node: 50 * time.Microsecond},
		Warmup: time.Second, Duration: 6 * time.Second, KillAt: time.Second, AckWait: 3 * time.Second, Seed: 5,
	}
}

// By default the killed gateway's workers complete their tasks through the
// other gateway: none is redelivered, and the rate does not dip for
// AckWait.
func TestKillMovesTasksToAnotherGateway(t *testing.T) {
	r := run(t, killConfig())
	if r.Orphaned < 5 || r.Moved != r.Orphaned || len(r.Redelivered) != 0 {
		t.Fatalf("%d tasks orphaned, %d moved, %d redelivered: want several, all moved", r.Orphaned, r.Moved, len(r.Redelivered))
	}
	within(t, "tasks/s", r.Throughput, 40/0.2, 0.05)
}

func TestValidate(t *testing.T) {
	for name, cfg := range map[string]Config{
		"negative workers": {Workers: -1},
		"replicas":         {Nodes: 2, Replicas: 3},
		"window":           {Queues: 4, Window: 2},
		"kill one":         {KillAt: time.Second},
		"share":            {Costs: Costs{GatewayWorkerShare: 2}},
	} {
		if _, err := Run(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// Three replicas: the leader does all of a task's node work, each of the
// two followers the stores and acks (half of it), so the nodes together
// spend twice Node per task (times Replicated).
func TestReplicationCost(t *testing.T) {
	for _, rep := range []float64{1, 1.5} {
		r := run(t, Config{
			Nodes: 3, Queues: 3, Workers: 30, Window: 30, Compute: 10 * time.Millisecond,
			Costs:  Costs{Node: 100 * time.Microsecond, Replicated: rep},
			Warmup: 200 * time.Millisecond, Duration: 2 * time.Second,
		})
		// Cores over the whole run, tasks/s over the measurement: the
		// rate is steady after the first few ms.
		perTask := r.NodeBusy / r.Throughput
		within(t, "node CPU per task (µs)", perTask*1e6, 200*rep, 0.05)
	}
}

// With one task in flight and nothing that costs CPU, the producer's
// loop is its put (four one-way latencies: to the gateway, the node and
// back) and its get, which waits for the handler and the result's way
// back: 1 ms latencies and a 10 ms handler make a 4 ms put and a 14 ms
// get.
func TestProducerLoopIsItsPutAndItsGet(t *testing.T) {
	cfg := Config{Workers: 1, Window: 1, Compute: 10 * time.Millisecond, Latency: time.Millisecond,
		Warmup: 100 * time.Millisecond, Duration: 2 * time.Second}
	r := run(t, cfg)
	if r.PutP50 != 4*time.Millisecond || r.GetP50 != 14*time.Millisecond || r.GetP99 != r.GetP50 {
		t.Errorf("put p50 %v, get p50 %v p99 %v; want 4ms, 14ms, 14ms", r.PutP50, r.GetP50, r.GetP99)
	}
	within(t, "loops", float64(r.Loops), cfg.Duration.Seconds()/(r.PutP50+r.GetP50).Seconds(), 0.02)
	// The task reaches its worker 4 ms after the put, its result the
	// producer 4 ms after its handler's 10: a round trip of 18 ms.
	if r.WaitP50 != 4*time.Millisecond || r.BackP50 != 4*time.Millisecond || r.BackP99 != r.BackP50 || r.P50 != 18*time.Millisecond {
		t.Errorf("put to handler %v, handler end to result p50 %v p99 %v, round trip %v; want 4ms, 4ms, 4ms, 18ms", r.WaitP50, r.BackP50, r.BackP99, r.P50)
	}
}

// A gateway that fetches a pack for one get holds its other tasks for its
// own next gets, as qmaster --nats does: with fewer tasks in flight than
// workers, a task waits for a worker of that gateway to finish while
// other gateways' workers are idle, until HoldFor runs out and the
// gateway stores it again for them. Unpacked, every task starts at once.
func TestPackedTasksWaitInTheirGateway(t *testing.T) {
	cfg := Config{Gateways: 20, Workers: 1000, Window: 300, Compute: 100 * time.Millisecond,
		Warmup: 3 * time.Second, Duration: 5 * time.Second}
	cfg.Pack = 1
	if r := run(t, cfg); r.WaitP99 > 10*time.Millisecond || r.Moves != 0 {
		t.Errorf("unpacked: put to handler p99 %v, %d moved; want under 10ms, none", r.WaitP99, r.Moves)
	}
	cfg.Pack, cfg.HoldFor = 32, 2*time.Second
	if r := run(t, cfg); r.WaitP99 < cfg.Compute || r.Moves != 0 {
		t.Errorf("packed, held 2s: put to handler p99 %v, %d moved; want at least a handler's %v, none", r.WaitP99, r.Moves, cfg.Compute)
	}
	cfg.HoldFor = 50 * time.Millisecond
	if r := run(t, cfg); r.Moves == 0 {
		t.Errorf("packed, held 50ms: none moved to the idle workers")
	}
}

// The tasks a killed gateway held come back with its leases, AckWait
// after its last renewal. Killed just after the first put, it holds most
// of the pack it fetched: its 10 workers take 600ms to run 32 tasks.
func TestKilledGatewaysHeldTasksComeBack(t *testing.T) {
	cfg := Config{Gateways: 4, Workers: 40, Window: 200, Compute: 200 * time.Millisecond, Pack: 32, HoldFor: time.Minute,
		AckWait: time.Second, KillAt: 50 * time.Millisecond, NoHandover: true, Warmup: 100 * time.Millisecond, Duration: 3 * time.Second}
	r := run(t, cfg)
	// Its leases alone are at most its workers' (about 10).
	if r.Orphaned <= 2*cfg.Workers/cfg.Gateways || len(r.Redelivered) != r.Orphaned {
		t.Fatalf("%d orphaned, %d redelivered; want more than its workers had leased, all of them", r.Orphaned, len(r.Redelivered))
	}
	for _, d := range r.Redelivered {
		if d < cfg.AckWait*2/3 || d > cfg.AckWait+100*time.Millisecond {
			t.Errorf("a task came back %v after the kill; want within AckWait %v after its last renewal", d, cfg.AckWait)
		}
	}
}

// With a worker of each queue on each gateway, fixed packs wait in the
// gateway that fetched them, behind its one busy worker; packs that
// follow the gateways shrink to one task, and a task waits only for a
// worker, a handler's time (the window is two tasks a worker).
func TestPacksFollowTheGateways(t *testing.T) {
	cfg := Config{Gateways: 10, Workers: 50, Queues: 5, Window: 100, Compute: 500 * time.Millisecond,
		Pack: 32, HoldFor: time.Second, Warmup: 5 * time.Second, Duration: 10 * time.Second}
	bound := cfg.Compute + cfg.Compute/2
	fixed := run(t, cfg)
	cfg.PackSpan = 250 * time.Millisecond
	following := run(t, cfg)
	if fixed.WaitP99 <= bound || following.WaitP99 > bound {
		t.Errorf("put to handler p99: fixed packs %v, packs following the gateways %v; want over %v, then at most",
			fixed.WaitP99, following.WaitP99, bound)
	}
}
