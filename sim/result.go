package sim

import (
	"slices"
	"time"
)

// Result is what a run measured.
type Result struct {
	// Tasks is the number of results the producers received during the
	// measured Duration, and Throughput that per second.
	Tasks      int
	Throughput float64
	// P50 and P99 are percentiles of a task's round trip, from its put to
	// its result's arrival at the producer, over the tasks whose result
	// arrived during the measurement.
	P50, P99 time.Duration
	// Mean is the round trip's mean (Little's law: Window / Throughput).
	Mean time.Duration
	// WaitP50 and WaitP99 are percentiles of the time from a task's put to
	// the start of its handler.
	WaitP50, WaitP99 time.Duration
	// BackP50 and BackP99 are percentiles of the time from the end of a
	// task's handler to its result's arrival at the producer.
	BackP50, BackP99 time.Duration
	// Orphaned is how many tasks the killed gateway had leased or held
	// (or had on their way to it), and
	// Redelivered when each redelivered task reached a worker, counted
	// from the kill. Orphans whose completion the gateway had sent on
	// before it died are done, not redelivered.
	Orphaned    int
	Redelivered []time.Duration
	// Moved is how many of the orphans their workers completed through
	// another gateway.
	Moved int
	// Moves is how many held tasks gateways stored again for others'
	// gets (Config.HoldFor).
	Moves int
	// GatewayBusy, NodeBusy and ClientBusy are the cores each kind of
	// process used over the whole run, summed over the processes; MaxNode
	// is the busiest node's.
	GatewayBusy, NodeBusy, ClientBusy, MaxNode float64

	// PerSecond counts the results received in each second of the
	// measurement.
	PerSecond []int
	// Loops is how many times the producers got results and put as many
	// tasks during the measurement, Batch their mean results per get, and
	// PutP50, PutP99 percentiles of how long a put took; GetP50, GetP99
	// those of a get of results, from its call to the results' arrival in
	// the producer's process (as qbench fleet measures them).
	Loops          int
	Batch          float64
	PutP50, PutP99 time.Duration
	GetP50, GetP99 time.Duration

	rtts, waits, backs, puts, gets []time.Duration
	batched                        int
}

// Burst counts Redelivered by period after the kill.
func (r *Result) Burst(period time.Duration) []int {
	var counts []int
	for _, d := range r.Redelivered {
		i := int(d / period)
		for len(counts) <= i {
			counts = append(counts, 0)
		}
		counts[i]++
	}
	return counts
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

// Run simulates cfg and returns what it measured.
func Run(cfg Config) (*Result, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := newModel(cfg)
	end := cfg.Warmup + cfg.Duration
	m.c.runUntil(end)
	r := m.res
	slices.Sort(r.rtts)
	slices.Sort(r.waits)
	slices.Sort(r.backs)
	slices.Sort(r.puts)
	slices.Sort(r.gets)
	r.Loops = len(r.puts)
	if r.Loops > 0 {
		r.Batch = float64(r.batched) / float64(r.Loops)
	}
	r.PutP50, r.PutP99 = percentile(r.puts, 0.50), percentile(r.puts, 0.99)
	r.GetP50, r.GetP99 = percentile(r.gets, 0.50), percentile(r.gets, 0.99)
	r.Tasks = len(r.rtts)
	r.Throughput = float64(r.Tasks) / cfg.Duration.Seconds()
	r.P50, r.P99 = percentile(r.rtts, 0.50), percentile(r.rtts, 0.99)
	r.WaitP50, r.WaitP99 = percentile(r.waits, 0.50), percentile(r.waits, 0.99)
	r.BackP50, r.BackP99 = percentile(r.backs, 0.50), percentile(r.backs, 0.99)
	var sum time.Duration
	for _, d := range r.rtts {
		sum += d
	}
	if r.Tasks > 0 {
		r.Mean = sum / time.Duration(r.Tasks)
	}
	cores := func(d time.Duration) float64 { return d.Seconds() / end.Seconds() }
	for _, g := range m.gateways {
		r.GatewayBusy += cores(g.p.busy)
	}
	for _, n := range m.nodes {
		r.NodeBusy += cores(n.p.busy)
		r.MaxNode = max(r.MaxNode, cores(n.p.busy))
	}
	for _, c := range m.clients {
		r.ClientBusy += cores(c.busy)
	}
	return r, nil
}
