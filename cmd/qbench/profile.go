package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

// newProfileCmd is the profiling harness: a master in this process, under
// runtime/pprof, with qworker processes and a producer process (qbench
// drive-qm) driving the batched or one-request-per-op workload at it.
func newProfileCmd() *cobra.Command {
	opts := &options{}
	var (
		cpuProfile, memProfile string
		size, workers, rtt     int
		oneReq                 bool
	)
	cmd := &cobra.Command{
		Use:   "profile --cpuprofile FILE [--memprofile FILE] [flags]",
		Short: "Profile an in-process qm master under the bench workload",
		Long: `profile runs a qm master inside qbench (master.New and Serve, qm's
default settings) with a CPU profile running, starts --workers qworker
processes and a producer process, and puts --n tasks of --size bytes through
it, batched unless --one-req. With --rtt, the producer instead puts one task
at a time and waits for its result, --rtt times. Then it writes the
allocation profile. Read them with go tool pprof -top.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			b, err := newBench(opts, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer b.close()
			if memProfile != "" {
				runtime.MemProfileRate = 64 << 10
			}
			srv, err := master.New(master.Config{Authkey: []byte(b.key)})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
				<-served
			}()
			addr := ln.Addr().String()
			c, err := b.dialQM(ctx, addr)
			if err != nil {
				return err
			}
			defer c.Close()
			mode := qmMode{batch: opts.QMBatch, concurrency: opts.QMConcurrency}
			if oneReq {
				mode = qmMode{batch: 1, concurrency: 1}
			}
			ws, err := b.startQWorkers(ctx, c, addr, workers, mode)
			defer stopAll(ws)
			if err != nil {
				return err
			}
			f, err := os.Create(cpuProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			n := opts.N
			if rtt > 0 {
				n = 0
			}
			out, err := b.drive(ctx, addr, mode, n, size, rtt)
			pprof.StopCPUProfile()
			if err != nil {
				return err
			}
			if rtt > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%d round trips of %d B, %d workers, concurrency %d: p50 %.1f µs, p99 %.1f µs\n",
					rtt, size, workers, mode.concurrency, out.RTTP50, out.RTTP99)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%d tasks of %d B, %d workers, batch %d, concurrency %d: %.0f tasks/s\n",
					n, size, workers, mode.batch, mode.concurrency, float64(n)/out.Seconds)
			}
			if memProfile != "" {
				mf, err := os.Create(memProfile)
				if err != nil {
					return err
				}
				defer mf.Close()
				return pprof.Lookup("allocs").WriteTo(mf, 0)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&opts.N, "n", 200000, "tasks to put through")
	fl.IntVar(&size, "size", 16, "payload bytes")
	fl.IntVar(&workers, "workers", 4, "qworker processes")
	fl.BoolVar(&oneReq, "one-req", false, "one request per operation instead of batches")
	fl.IntVar(&rtt, "rtt", 0, "single-task round trips to run instead of --n tasks")
	fl.StringVar(&opts.Bin, "bin", "bin", "`dir`ectory holding qworker")
	fl.IntVar(&opts.QMBatch, "qm-batch", 1000, "tasks per put and per get of results")
	fl.IntVar(&opts.QMConcurrency, "qm-concurrency", 32, "qworker --concurrency")
	fl.StringVar(&cpuProfile, "cpuprofile", "master.cpu.pprof", "write the master's CPU profile to `file`")
	fl.StringVar(&memProfile, "memprofile", "master.allocs.pprof", "write the master's allocation profile to `file` (empty: none)")
	return cmd
}

// drive runs qbench drive-qm against addr as a separate process, so that
// the producer's work stays out of the master's profile, and returns what it
// measured: the seconds n tasks took, then the percentiles of rtt round trips.
func (b *bench) drive(ctx context.Context, addr string, mode qmMode, n, size, rtt int) (driveResult, error) {
	var res driveResult
	var perr error
	p, err := b.procs.start("producer", []string{b.self, "drive-qm", "--addr", addr,
		"--n", strconv.Itoa(n), "--size", strconv.Itoa(size), "--batch", strconv.Itoa(mode.batch),
		"--rtt", strconv.Itoa(rtt)},
		[]string{"QM_AUTHKEY=" + b.key}, func(line string) { perr = json.Unmarshal([]byte(line), &res) })
	if err != nil {
		return res, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.stop()
		return res, ctx.Err()
	}
	if p.err != nil {
		return res, p.failure()
	}
	if perr != nil || res.Seconds == 0 && res.RTTP50 == 0 {
		return res, errors.Join(errors.New("producer printed no result"), perr)
	}
	return res, nil
}

type driveResult struct {
	Seconds float64 `json:"seconds"`
	// RTTP50 and RTTP99 are set by drive-qm --rtt, in microseconds.
	RTTP50 float64 `json:"rtt_p50_us,omitempty"`
	RTTP99 float64 `json:"rtt_p99_us,omitempty"`
}

// newDriveCmd is the hidden producer process of the profile harness.
func newDriveCmd() *cobra.Command {
	var (
		addr                string
		n, size, batch, rtt int
	)
	cmd := &cobra.Command{
		Use:    "drive-qm --addr HOST:PORT",
		Short:  "Put tasks through a qm master and collect their results",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(os.Getenv("QM_AUTHKEY")), Role: "producer", Name: "qbench"})
			if err != nil {
				return err
			}
			defer c.Close()
			payload, err := qmPayload(size)
			if err != nil {
				return err
			}
			var res driveResult
			if n > 0 {
				took, err := qmThroughput(ctx, c, batch, n, payload)
				if err != nil {
					return err
				}
				res.Seconds = took.Seconds()
			}
			if rtt > 0 {
				if _, err := qmRoundTrips(ctx, c, rttWarmup, payload); err != nil {
					return err
				}
				trips, err := qmRoundTrips(ctx, c, rtt, payload)
				if err != nil {
					return err
				}
				rc := cell{RTT: trips}
				res.RTTP50 = float64(rc.percentile(0.5)) / float64(time.Microsecond)
				res.RTTP99 = float64(rc.percentile(0.99)) / float64(time.Microsecond)
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&addr, "addr", "", "master `host:port`")
	fl.IntVar(&n, "n", 1000, "tasks")
	fl.IntVar(&size, "size", 16, "payload bytes")
	fl.IntVar(&batch, "batch", 1000, "tasks per put and per get")
	fl.IntVar(&rtt, "rtt", 0, "then this many single-task round trips (p50 and p99 printed)")
	return cmd
}
