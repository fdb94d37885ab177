package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

type getOptions struct {
	IO     *factory
	Client clientOptions

	Queue   string
	N       int
	Timeout time.Duration
}

// errNoItem is returned by get when nothing arrived within its timeout.
var errNoItem = errors.New("no item")

func newCmdGet(f *factory, runF func(*getOptions) error) *cobra.Command {
	opts := &getOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "get QUEUE [flags]",
		Short: "Take items from a queue for good and print them",
		Long: `Take up to -n items from QUEUE and print each as one line of JSON.
The items are removed for good once printed. Each batch is taken under a
lease and acknowledged once written: if writing fails (a reader that went
away, | head), the batch goes back to the front of QUEUE, the items the
reader got included, and get exits 141, silently. What a pipe took in
full before its reader went is gone with it: take few at a time (-n)
when the reader may stop early. Killed (kill -9) before it acknowledged
them, get's items come back when their lease runs out.

get waits up to --timeout for the first item, then takes whatever else is
ready at once, up to -n. If nothing arrives in time it exits with status 1.

A float NaN or infinity prints as Python's json module writes it (NaN,
Infinity, -Infinity), which put reads back. An item that cannot be
printed at all is named by its task ID on stderr; the items after it are
still printed, and get exits with status 1.`,
		Example: `  qmaster get jobs
  qmaster get results -n 100 --timeout 30s | jq .`,
		Args: args(1, 1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue = args[0]
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if opts.N < 1 {
				return usageErrorf("-n must be at least 1")
			}
			if opts.Timeout < 0 {
				return usageErrorf("--timeout must not be negative")
			}
			if runF != nil {
				return runF(opts)
			}
			return getRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().IntVarP(&opts.N, "n", "n", 1, "most items to take")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 5*time.Second, "how long to wait for the first item (0: do not wait)")
	return cmd
}

// writeBatch writes tasks, taken from opts.Queue under a lease, to out and
// acknowledges them once written, their leases renewed meanwhile; those
// it cannot write go back (giveBackUnwritten). It returns how many could
// not be printed at all (taken for good all the same, named on stderr).
func writeBatch(c *wire.Client, opts *getOptions, out *bufio.Writer, tasks []wire.Task) (unprinted int, err error) {
	defer keepLeased(c, opts.Queue, tasks)()
	for _, t := range tasks {
		line, rerr := jsonval.AppendPayloadAllowNaN(out.AvailableBuffer(), t.Payload)
		if rerr != nil {
			// Taken for good all the same (no retry prints it): name it,
			// after the lines before it, and print the rest.
			if werr := out.Flush(); werr != nil {
				return unprinted, giveBackUnwritten(c, opts.Queue, tasks, werr)
			}
			fmt.Fprintf(opts.IO.ErrOut, "qmaster get: task %d: %v\n", t.ID, rerr)
			unprinted++
			continue
		}
		out.Write(line)
		if werr := out.WriteByte('\n'); werr != nil {
			return unprinted, giveBackUnwritten(c, opts.Queue, tasks, werr)
		}
	}
	// Written, or in the buffer, whose flush is the last write:
	// acknowledged once it is on its way to the reader.
	if werr := out.Flush(); werr != nil {
		return unprinted, giveBackUnwritten(c, opts.Queue, tasks, werr)
	}
	if aerr := ackTasks(c, opts.Queue, tasks); aerr != nil {
		n := len(tasks)
		return unprinted, fmt.Errorf("get from %s: %d %s printed but not acknowledged; %s again: %w",
			opts.Queue, n, plural(n, "item", "items"), plural(n, "it may come", "they may come"), aerr)
	}
	return unprinted, nil
}

// getLease is the lease of the items get takes, renewed while they are
// written (keepLeased): acknowledged once written, they come back when it
// runs out if get is killed in between. A variable for tests.
var getLease = 30 * time.Second

// ackTasks acknowledges tasks, taken from queue and written.
func ackTasks(c *wire.Client, queue string, tasks []wire.Task) error {
	ctx, cancel := context.WithTimeout(context.Background(), callSlack)
	defer cancel()
	ids := make([]uint64, len(tasks))
	for i, t := range tasks {
		ids[i] = t.ID
	}
	return c.Ack(ctx, queue, ids...)
}

// giveBackUnwritten gives tasks, taken from queue, back to its front,
// unattempted, as their writing failed with werr (a reader gone), and
// returns werr: they were not delivered. Those the reader got before it
// went (in its pipe's buffer) come again.
func giveBackUnwritten(c *wire.Client, queue string, tasks []wire.Task, werr error) error {
	ctx, cancel := context.WithTimeout(context.Background(), callSlack)
	defer cancel()
	if err := c.Release(ctx, queue, tasks); err != nil {
		// Said, whatever the write's error: the items are not back yet.
		return fmt.Errorf("write output: %v (%d %s not given back; %s back when %s lease runs out: %v)", werr, len(tasks),
			plural(len(tasks), "item", "items"), plural(len(tasks), "it comes", "they come"), plural(len(tasks), "its", "their"), err)
	}
	return &outputError{werr}
}

// keepLeased renews the leases of tasks, taken from queue, every third of
// getLease until the func it returns is called: their reader may take
// its time (a pager), and items whose leases ran out would go back to
// the queue while they are printed.
func keepLeased(c *wire.Client, queue string, tasks []wire.Task) (stop func()) {
	ids := make([]uint64, len(tasks))
	for i, t := range tasks {
		ids[i] = t.ID
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(getLease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), callSlack)
				_ = c.Extend(ctx, queue, getLease, ids...) // failing, the ack says so
				cancel()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// callSlack is how much longer than the master's own wait a client waits
// for its answer before giving up on it.
const callSlack = 10 * time.Second

func getRun(ctx context.Context, opts *getOptions) error {
	defer catchBrokenPipe()()
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "get")
	if err != nil {
		return err
	}
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	// As map: through another gateway, or the same master restarted,
	// when the one it waits on stops.
	reconnect := reconnects(c)

	out := bufio.NewWriterSize(opts.IO.Out, outBufferSize)
	deadline := time.Now().Add(opts.Timeout)
	got, unprinted := 0, 0
	for got < opts.N {
		wait := max(0, time.Until(deadline))
		if got > 0 {
			wait = 0 // after the first item, only what is ready
		}
		cctx, cancel := context.WithTimeout(ctx, wait+callSlack)
		tasks, err := c.Get(cctx, opts.Queue, wire.GetOptions{Max: opts.N - got, Timeout: wait, Lease: getLease})
		cancel()
		if err != nil && len(tasks) == 0 && got == 0 && reconnect && time.Until(deadline) > 0 && connectionGone(err) {
			c.Close()
			if pause(ctx, redialPause); ctx.Err() == nil {
				c, err = redialUntil(ctx, deadline, func(ctx context.Context) (*wire.Client, error) {
					return opts.Client.connect(ctx, opts.IO, "admin", "get")
				})
			}
			if err == nil {
				continue
			}
			c = nil
		}
		if len(tasks) > 0 {
			n, werr := writeBatch(c, opts, out, tasks)
			unprinted += n
			if werr != nil {
				return werr
			}
		}
		got += len(tasks)
		if err != nil {
			out.Flush()
			return fmt.Errorf("get from %s: %w", opts.Queue, err)
		}
		if len(tasks) == 0 {
			break
		}
	}
	if err := out.Flush(); err != nil {
		return err
	}
	if unprinted > 0 {
		return fmt.Errorf("%d of %d %s taken could not be printed", unprinted, got, plural(got, "item", "items"))
	}
	if got == 0 {
		return fmt.Errorf("%w in %s within %s%s", errNoItem, opts.Queue, opts.Timeout, pausedNote(ctx, c, opts.Queue))
	}
	return nil
}

// pausedNote says, after a get that took nothing, whether the queue is
// paused (it hands out nothing then, though it may hold tasks), or "".
func pausedNote(ctx context.Context, c *wire.Client, queue string) string {
	if c == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := c.Stats(ctx, queue)
	if err != nil || len(st) != 1 || !st[0].Paused {
		return ""
	}
	return fmt.Sprintf(" (the queue is paused, with %d ready; qmaster resume %s)", st[0].Ready, queue)
}

// redialPause is how long get waits before it connects again, and
// between tries: a master that answers at once that it is stopping is
// not asked again at once.
const redialPause = 200 * time.Millisecond

// redialUntil connects with dial until it succeeds, ctx ends or deadline
// passes (a restarted master may take seconds to listen again).
func redialUntil(ctx context.Context, deadline time.Time, dial func(context.Context) (*wire.Client, error)) (*wire.Client, error) {
	for {
		c, err := dial(ctx)
		if err == nil || time.Until(deadline) < redialPause {
			return c, err
		}
		if pause(ctx, redialPause); ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// outBufferSize is the stdout buffer of get and map: 64 KiB, a pipe's
// capacity. bufio's default (4 KiB) wrote every line of a 4 KiB result
// with a system call of its own, which made map the slowest process of
// a run at 4 KiB.
const outBufferSize = 64 << 10
