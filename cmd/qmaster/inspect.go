package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

type inspectOptions struct {
	IO     *factory
	Client clientOptions

	JSON     bool
	Watch    bool
	Interval time.Duration
}

func newCmdInspect(f *factory, runF func(*inspectOptions) error) *cobra.Command {
	opts := &inspectOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "inspect [flags]",
		Short: "Show the queues of a master and their counts",
		Long: `Show every queue of the master, one per line:

  QUEUE      the queue's name (QUEUE.dead holds the tasks QUEUE gave up on;
             "(paused)" after it: the queue hands out nothing, see qmaster pause)
  READY      tasks waiting to be taken
  DELAYED    tasks not yet due: delayed puts, and failed tasks waiting out
             their retry backoff (qmaster peek --delayed lists them)
  LEASED     tasks taken by a worker and not yet acknowledged
  DONE       tasks acknowledged, or taken for good, since the master started
  DEAD       tasks in the queue's dead-letter queue
  CONSUMERS  gets waiting on the queue now
  OLDEST     time since the task at the front was put ("-" if none ready);
             a delayed or retried task counts from its first put, not
             from when it came due
  NEXT DUE   when the first delayed task comes due ("-" if none)

With --json, print the statistics as one JSON array instead (ages in
nanoseconds, plus running totals). With --watch, redraw every --interval
until interrupted. A --watch whose master stops connects again for up to
a minute: through another of the --server addresses, or to the master
restarted if its queues outlive it (--data-dir, or a cluster's gateway);
while a cluster answers that its queues are unavailable, it says so on
stderr and looks again at the next --interval.

Through a cluster's gateway, DONE and the running totals are near, not
exact (JetStream keeps them; docs/SCALING.md has how): a delayed or
retried task that came due counts twice among the puts, and once as done,
until a worker takes it; and a gateway that died while putting leaves the
puts and DONE short by what it had not yet counted. DEAD is exact, and so
are READY and LEASED of what the gateway asked holds; JetStream counts each
pack of tasks another gateway holds as out whole, so its tasks waiting
there count as LEASED, as do the failed tasks it holds back for their
retry backoff (which the gateway asked counts as DELAYED).`,
		Example: `  qmaster inspect
  qmaster inspect --server 10.0.0.5:5000 --watch
  qmaster inspect --json | jq '.[] | select(.ready > 0) | .queue'`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if cmd.Flags().Changed("interval") && !opts.Watch {
				return usageErrorf("--interval needs --watch")
			}
			if opts.Interval <= 0 {
				return usageErrorf("--interval must be positive")
			}
			if runF != nil {
				return runF(opts)
			}
			return inspectRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the statistics as a JSON array")
	cmd.Flags().BoolVarP(&opts.Watch, "watch", "w", false, "redraw every --interval until interrupted")
	cmd.Flags().DurationVar(&opts.Interval, "interval", time.Second, "time between redraws with --watch")
	return cmd
}

// clearScreen moves the cursor home and clears the terminal.
const clearScreen = "\x1b[H\x1b[2J"

func inspectRun(ctx context.Context, opts *inspectOptions) error {
	dial := func(ctx context.Context) (*wire.Client, error) {
		return opts.Client.connect(ctx, opts.IO, "admin", "inspect")
	}
	c, err := dial(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	if !opts.Watch {
		return inspectOnce(ctx, c, opts, opts.IO.Out)
	}

	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for first := true; ; first = false {
		// Render into a buffer first so that a redraw replaces the screen
		// in one write, without flicker.
		var buf bytes.Buffer
		if opts.IO.StdoutTTY {
			buf.WriteString(clearScreen)
			fmt.Fprintf(&buf, "Every %s: qmaster inspect --server %s    %s\n\n", opts.Interval, opts.Client.Server, time.Now().Format(time.TimeOnly))
		} else if !first && !opts.JSON {
			buf.WriteString("\n")
		}
		err := inspectOnce(ctx, c, opts, &buf)
		if ctx.Err() != nil {
			return nil // interrupted: the normal end of --watch
		}
		if err != nil && reconnects(c) && connectionGone(err) {
			// As get: through another gateway, or the same master
			// restarted, when the one watched stops; the redraw goes
			// on at once.
			c.Close()
			fmt.Fprintf(opts.IO.ErrOut, "qmaster inspect: connection lost (%v); reconnecting...\n", err)
			pause(ctx, redialPause)
			c, err = redialUntil(ctx, time.Now().Add(redialFor), dial)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				return fmt.Errorf("connect again within %s: %w", redialFor, err)
			}
			continue
		}
		if errors.Is(err, wire.ErrUnavailable) {
			// A cluster electing a leader, or short of a majority: say
			// so, and look again at the next tick.
			fmt.Fprintf(opts.IO.ErrOut, "qmaster inspect: %v\n", err)
		} else if err != nil {
			return err
		} else if _, err := opts.IO.Out.Write(buf.Bytes()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func inspectOnce(ctx context.Context, c *wire.Client, opts *inspectOptions, w io.Writer) error {
	stats, err := c.Stats(ctx, "")
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	if opts.JSON {
		if stats == nil {
			stats = []wire.QueueStats{}
		}
		return writeJSON(w, stats, opts.IO.StdoutTTY && !opts.Watch)
	}
	if err := writeStatsTable(w, stats); err != nil {
		return err
	}
	if len(stats) == 0 {
		// A note, not data: stderr, except in a --watch redraw, which would
		// clear it at once.
		note := opts.IO.ErrOut
		if opts.Watch {
			note = w
		}
		fmt.Fprintln(note, "(no queues)")
	}
	return nil
}

func writeStatsTable(w io.Writer, stats []wire.QueueStats) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "QUEUE\tREADY\tDELAYED\tLEASED\tDONE\tDEAD\tCONSUMERS\tOLDEST\tNEXT DUE")
	for _, s := range stats {
		if s.Unread {
			fmt.Fprintf(tw, "%s (not read in time)\t-\t-\t-\t-\t-\t-\t-\t-\n", s.Queue)
			continue
		}
		oldest := "-"
		if s.Ready > 0 {
			oldest = humanAge(s.OldestAge)
		}
		delayed, due := strconv.Itoa(s.Delayed), "-"
		if s.Retrying > 0 {
			delayed += fmt.Sprintf(" (%d retrying)", s.Retrying)
		}
		if !s.NextDue.IsZero() {
			due = "in " + humanAge(max(time.Until(s.NextDue), 0))
		}
		name := s.Queue
		if s.Paused {
			name += " (paused)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", name, s.Ready, delayed, s.Leased, s.Done, s.Dead, s.Consumers, oldest, due)
	}
	return tw.Flush()
}
