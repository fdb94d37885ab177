package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

// deadTaskOptions are the options of requeue and drop, which both act on
// dead tasks of a queue named by their ids.
type deadTaskOptions struct {
	IO     *factory
	Client clientOptions

	Queue string
	IDs   []uint64
	All   bool
	Now   bool // requeue: delayed and retrying tasks, made ready now
}

func newCmdRequeue(f *factory, runF func(*deadTaskOptions) error) *cobra.Command {
	opts := &deadTaskOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "requeue QUEUE (ID... | --all) [--now] [flags]",
		Short: "Move dead tasks back to their queue, or run delayed ones now",
		Long: `Move dead tasks of QUEUE, named by their IDs (see qmaster dead QUEUE) or
all of them with --all, from its dead-letter queue QUEUE.dead back to the
end of QUEUE. Each gets its attempts anew and keeps its last error until
it fails again.

A producer waiting for their results has had an error result for each
already; a requeued task that succeeds publishes a second result. A task
whose reply queue was deleted with its tasks cancelled (an ended map's, or
delete --cancel-tasks) is still cancelled: it is dropped, unrun, when a
worker would take it, as no one waits for its result.

With --now, the tasks named are instead delayed or retrying tasks of QUEUE
(see qmaster peek QUEUE --delayed), made ready at once: a retrying task
goes to the front, a delayed put to the back.`,
		Example: `  qmaster requeue jobs 1041 1077
  qmaster requeue jobs --all
  qmaster requeue jobs --now --all`,
		Args: args(1, -1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.parse(args, true); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return requeueRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().BoolVar(&opts.All, "all", false, "requeue every dead task of QUEUE (with --now: every delayed one)")
	cmd.Flags().BoolVar(&opts.Now, "now", false, "make delayed or retrying tasks of QUEUE ready now, instead of requeueing dead ones")
	return cmd
}

func newCmdDrop(f *factory, runF func(*deadTaskOptions) error) *cobra.Command {
	opts := &deadTaskOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "drop QUEUE ID... [flags]",
		Short: "Delete dead tasks for good",
		Long: `Delete dead tasks of QUEUE, named by their IDs (see qmaster dead QUEUE),
from its dead-letter queue QUEUE.dead for good. To delete them all, purge
the dead-letter queue: qmaster purge QUEUE.dead.`,
		Example: `  qmaster drop jobs 1041 1077`,
		Args:    args(1, -1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.parse(args, false); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return dropRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	return cmd
}

// parse fills the queue and ids from args and checks the flags; allowAll
// says whether --all may stand for the ids.
func (o *deadTaskOptions) parse(args []string, allowAll bool) error {
	if err := o.Client.validate(); err != nil {
		return err
	}
	o.Queue = strings.TrimSuffix(args[0], queue.DeadSuffix)
	o.IDs = o.IDs[:0]
	for _, a := range args[1:] {
		id, err := strconv.ParseUint(a, 10, 64)
		if err != nil || id == 0 {
			return usageErrorf("bad task ID %q: want a positive integer", a)
		}
		o.IDs = append(o.IDs, id)
	}
	switch {
	case o.All && len(o.IDs) > 0:
		return usageErrorf("give task IDs or --all, not both")
	case len(o.IDs) == 0 && !o.All && allowAll && o.Now:
		return usageErrorf("missing task IDs (or --all for every delayed task of %s)", o.Queue)
	case len(o.IDs) == 0 && !o.All && allowAll:
		return usageErrorf("missing task IDs (or --all for every dead task of %s)", o.Queue)
	case len(o.IDs) == 0 && !allowAll:
		return usageErrorf("missing task IDs (qmaster purge %s drops them all)", queue.DeadLetterName(o.Queue))
	}
	return nil
}

func requeueRun(ctx context.Context, opts *deadTaskOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "requeue")
	if err != nil {
		return err
	}
	defer c.Close()
	if opts.Now {
		n, err := c.RunNow(ctx, opts.Queue, opts.IDs...)
		if n > 0 || err == nil { // a count beside an error only if some were
			fmt.Fprintf(opts.IO.ErrOut, "made %d delayed %s of %s ready\n", n, plural(n, "task", "tasks"), opts.Queue)
		}
		switch {
		case errors.Is(err, wire.ErrNoSuchTask):
			return fmt.Errorf("not delayed tasks of %s: %w", opts.Queue, err)
		case err != nil:
			return fmt.Errorf("queue %s: %w", opts.Queue, err)
		}
		return nil
	}
	n, err := c.Requeue(ctx, opts.Queue, opts.IDs...)
	if n > 0 || err == nil {
		fmt.Fprintf(opts.IO.ErrOut, "requeued %d dead %s to %s\n", n, plural(n, "task", "tasks"), opts.Queue)
	}
	return deadTaskError(opts.Queue, err)
}

func dropRun(ctx context.Context, opts *deadTaskOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "drop")
	if err != nil {
		return err
	}
	defer c.Close()
	dq := queue.DeadLetterName(opts.Queue)
	n, err := c.Drop(ctx, dq, opts.IDs...)
	if n > 0 || err == nil {
		fmt.Fprintf(opts.IO.ErrOut, "dropped %d dead %s of %s\n", n, plural(n, "task", "tasks"), opts.Queue)
	}
	return deadTaskError(dq, err)
}

// deadTaskError words the error of a requeue or drop: the master names
// each id it did not find. q is the queue or its dead-letter queue.
func deadTaskError(q string, err error) error {
	q = strings.TrimSuffix(q, queue.DeadSuffix)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, wire.ErrNoSuchTask):
		return fmt.Errorf("not dead tasks of %s: %w", q, err)
	case errors.Is(err, wire.ErrUnknownQueue):
		// The dead-letter queue is the one unknown: QUEUE may well exist.
		return fmt.Errorf("queue %s: no task died there (its dead-letter queue: %w)", q, err)
	}
	return fmt.Errorf("queue %s: %w", q, err)
}
