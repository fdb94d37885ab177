package main

import (
	"context"
	"fmt"
	"time"
)

// system is one system under test at one payload size and worker count:
// its server and workers running, a producer connected.
type system interface {
	// throughput puts n tasks through and collects their results.
	throughput(ctx context.Context, n int) (time.Duration, error)
	// roundTrips puts one task and waits for its result, count times.
	roundTrips(ctx context.Context, count int) ([]time.Duration, error)
	// peakRSS is the server's peak resident set so far.
	peakRSS() (int64, error)
	// close stops what the system started.
	close()
}

// processes are a system's server and workers.
type processes struct {
	server  *proc
	workers []*proc
}

// peakRSS is the server's peak resident set so far.
func (p *processes) peakRSS() (int64, error) {
	hwm, _, err := memStatus(p.server.pid())
	return hwm, err
}

// stop stops the workers, then the server.
func (p *processes) stop() {
	stopAll(p.workers)
	if p.server != nil {
		p.server.stop()
	}
}

// rttRounds is how many turns the systems of a group take at the round
// trips: each measures a share of --rtt per turn, so that the machine's
// changing load (other tenants of a VM, for one) falls on all of them
// alike rather than on whichever ran in a bad minute.
const rttRounds = 10

// start starts sys at payload size with w workers.
func (b *bench) start(ctx context.Context, sys string, size, w int) (system, error) {
	switch sys {
	case "qm":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency}, size, w)
	case "qm-1req":
		return b.startQM(ctx, qmMode{batch: 1, concurrency: 1}, size, w)
	case "qm-defaults":
		return b.startQM(ctx, qmMode{defaults: true}, size, w)
	case "qm-disk":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "disk"}, size, w)
	case "qm-disk-interval":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "disk-interval"}, size, w)
	case "qm-js":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream"}, size, w)
	case "qm-js3":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream3"}, size, w)
	case "qm-js-nosync":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream-nosync"}, size, w)
	case "qm-js-unpacked":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream", pack: 1}, size, w)
	case "qm-js-unpacked-nosync":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream-nosync", pack: 1}, size, w)
	case "qm-js3-unpacked":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream3", pack: 1}, size, w)
	case "qm-js-packed":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream", pack: b.packSize()}, size, w)
	case "qm-js-packed-nosync":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream-nosync", pack: b.packSize()}, size, w)
	case "qm-js3-packed":
		return b.startQM(ctx, qmMode{batch: b.opts.QMBatch, concurrency: b.opts.QMConcurrency, storage: "jetstream3", pack: b.packSize()}, size, w)
	case "nats":
		return b.startNATSSystem(ctx, size, w, true, false)
	case "nats-nosync":
		return b.startNATSSystem(ctx, size, w, false, false)
	case "nats-packed":
		return b.startNATSSystem(ctx, size, w, true, true)
	case "nats-packed-nosync":
		return b.startNATSSystem(ctx, size, w, false, true)
	case "qm-stdio":
		return b.startQM(ctx, qmMode{python: pyStdio}, size, w)
	case "qm-command":
		return b.startQM(ctx, qmMode{python: pyCommand}, size, w)
	case "redis":
		return b.startRedisSystem(ctx, size, w, false)
	case "redis-1req":
		return b.startRedisSystem(ctx, size, w, true)
	case "python":
		return b.startPython(ctx, size, w)
	}
	return nil, fmt.Errorf("unknown system %q", sys)
}

// tasksFor is how many tasks a throughput measurement of sys puts.
func (b *bench) tasksFor(sys string) int {
	if sys == "qm-1req" || sys == "redis-1req" || sys == "python" {
		return b.opts.SlowN
	}
	if sys == "qm-command" { // a Python start per task: about 10 tasks/s per core
		return max(b.opts.SlowN/50, 10)
	}
	return b.opts.N
}

// optional reports whether sys may be missing or fail without failing the
// run: the baselines; qm failing is a bug.
func optional(sys string) bool { return sys == "redis" || sys == "redis-1req" || sys == "python" }

// group measures every system at one payload size and worker count: each
// starts and measures its throughput in turn, then they take turns at the
// round trips (rttRounds turns), then they stop. A baseline that fails
// gets a row saying why; a qm failure fails the run.
func (b *bench) group(ctx context.Context, size, w int) ([]cell, error) {
	cells := make([]cell, len(b.opts.Systems))
	running := make([]system, len(b.opts.Systems))
	defer func() {
		for _, s := range running {
			if s != nil {
				s.close()
			}
		}
	}()
	// fail records err for system i: the run goes on without a baseline,
	// and stops for qm.
	fail := func(i int, err error) error {
		if running[i] != nil {
			running[i].close()
			running[i] = nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		cells[i].Err = err.Error()
		if isSkip(err) || optional(cells[i].System) {
			return nil
		}
		return fmt.Errorf("%s S=%d W=%d: %w", cells[i].System, size, w, err)
	}

	for i, sys := range b.opts.Systems {
		cells[i] = cell{System: sys, Size: size, Workers: w, N: b.tasksFor(sys)}
		start := time.Now()
		fmt.Fprintf(b.log, "qbench: %s S=%d W=%d throughput ... ", sys, size, w)
		s, err := b.startSystem(ctx, sys, size, w)
		var took time.Duration
		if err == nil {
			running[i] = s
			took, err = s.throughput(ctx, cells[i].N)
		}
		if err != nil {
			fmt.Fprintf(b.log, "%v\n", err)
			if err := fail(i, err); err != nil {
				return nil, err
			}
			continue
		}
		cells[i].Throughput = float64(cells[i].N) / took.Seconds()
		fmt.Fprintf(b.log, "%.0f tasks/s (%.1fs)\n", cells[i].Throughput, time.Since(start).Seconds())
	}

	fmt.Fprintf(b.log, "qbench: S=%d W=%d round trips, %d turns ...\n", size, w, rttRounds)
	for i, s := range running {
		if s == nil {
			continue
		}
		if _, err := s.roundTrips(ctx, rttWarmup); err != nil {
			if err := fail(i, err); err != nil {
				return nil, err
			}
		}
	}
	for turn := range rttRounds {
		count := b.opts.RTT*(turn+1)/rttRounds - b.opts.RTT*turn/rttRounds
		for k := range running {
			// Each turn starts with the next system, so none always goes
			// first after another's.
			i := (k + turn) % len(running)
			if running[i] == nil || count == 0 {
				continue
			}
			trips, err := running[i].roundTrips(ctx, count)
			if err != nil {
				if err := fail(i, err); err != nil {
					return nil, err
				}
				continue
			}
			cells[i].RTT = append(cells[i].RTT, trips...)
		}
	}
	for i, s := range running {
		if s == nil {
			continue
		}
		rss, err := s.peakRSS()
		if err != nil {
			if err := fail(i, err); err != nil {
				return nil, err
			}
			continue
		}
		cells[i].PeakRSS = rss
		fmt.Fprintf(b.log, "qbench: %s S=%d W=%d: %s\n", cells[i].System, size, w, cells[i].summary())
	}
	return cells, nil
}
