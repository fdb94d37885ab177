package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

type configOptions struct {
	IO     *factory
	Client clientOptions

	Queue        string
	MaxAttempts  int
	RetryBackoff string
	set          bool
	policy       wire.Policy
}

func newCmdConfig(f *factory, runF func(*configOptions) error) *cobra.Command {
	opts := &configOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "config QUEUE [--max-attempts N] [--retry-backoff MIN..MAX|none] [flags]",
		Short: "Show or set a queue's retry policy",
		Long: `Show the retry policy in effect for QUEUE or, with flags, set it.

--max-attempts is how many deliveries a task gets before it goes to the
dead-letter queue. --retry-backoff is how long a failed task (a worker's
error, a lease that ran out, a worker that disconnected) waits before its
next delivery: MIN after the first failure, doubling with each to at most
MAX, each wait drawn at random from the upper half of its step so that
tasks that failed together do not come back together. "none" retries at
once.

Each call sets the queue's whole policy: a flag left out goes back to the
master's default (qmaster --max-attempts and --retry-backoff). The
policy is kept with the queues under --data-dir, and applies to attempts
that fail from now on. qmaster inspect --json shows it too.`,
		Example: `  qmaster config payments --max-attempts 10 --retry-backoff 1s..1h
  qmaster config payments
  qmaster config payments --retry-backoff none`,
		Args: args(1, 1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue = args[0]
			if err := opts.Client.validate(); err != nil {
				return err
			}
			fl := cmd.Flags()
			opts.set = fl.Changed("max-attempts") || fl.Changed("retry-backoff")
			if fl.Changed("max-attempts") && (opts.MaxAttempts < 1 || opts.MaxAttempts > queue.MaxMaxAttempts) {
				return usageErrorf("--max-attempts must be 1 to %d", queue.MaxMaxAttempts)
			}
			opts.policy.MaxAttempts = opts.MaxAttempts
			if fl.Changed("retry-backoff") {
				p, err := parseBackoff(opts.RetryBackoff)
				if err != nil {
					return usageErrorf("--retry-backoff: %v", err)
				}
				opts.policy.BackoffMin, opts.policy.BackoffMax = p.BackoffMin, p.BackoffMax
				if opts.policy.BackoffMin == 0 {
					opts.policy.BackoffMin = -1 // none, whatever the master's default
				}
			}
			if runF != nil {
				return runF(opts)
			}
			return configRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().IntVar(&opts.MaxAttempts, "max-attempts", 0, "deliveries of a task before it goes to the dead-letter queue")
	cmd.Flags().StringVar(&opts.RetryBackoff, "retry-backoff", "", "wait before a failed task's next delivery, `MIN..MAX` (e.g. 1s..1h), one duration, or none")
	return cmd
}

func configRun(ctx context.Context, opts *configOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "config")
	if err != nil {
		return err
	}
	defer c.Close()
	if opts.set {
		if err := c.Config(ctx, opts.Queue, opts.policy); err != nil {
			return fmt.Errorf("queue %s: %w", opts.Queue, err)
		}
	}
	st, err := c.Stats(ctx, opts.Queue)
	if errors.Is(err, wire.ErrUnknownQueue) {
		return fmt.Errorf("queue %s: %w: no policy set for it, so its tasks would get the master's defaults (qmaster --max-attempts and --retry-backoff); set one with --max-attempts or --retry-backoff", opts.Queue, err)
	}
	if err != nil {
		return fmt.Errorf("queue %s: %w", opts.Queue, err)
	}
	if len(st) != 1 {
		return fmt.Errorf("queue %s: the master sent %d queues' stats", opts.Queue, len(st))
	}
	s := st[0]
	backoff := "none"
	if s.BackoffMin > 0 {
		backoff = s.BackoffMin.String() + ".." + s.BackoffMax.String()
	}
	_, err = fmt.Fprintf(opts.IO.Out, "%s: max-attempts %d, retry-backoff %s\n", opts.Queue, s.MaxAttempts, backoff)
	return err
}

// parseBackoff reads a retry backoff: "none" (or "0"), one duration, or
// MIN..MAX. A zero BackoffMin means none.
func parseBackoff(s string) (queue.Policy, error) {
	s = strings.TrimSpace(s)
	if s == "none" || s == "0" {
		return queue.Policy{}, nil
	}
	lo, hi, isRange := strings.Cut(s, "..")
	min, err := time.ParseDuration(lo)
	if err != nil || min <= 0 {
		return queue.Policy{}, fmt.Errorf("%q: want none, a positive duration or MIN..MAX such as 1s..1h", s)
	}
	max := min
	if isRange {
		if max, err = time.ParseDuration(hi); err != nil || max < min {
			return queue.Policy{}, fmt.Errorf("%q: want MIN..MAX with MAX >= MIN, such as 1s..1h", s)
		}
	}
	p := queue.Policy{BackoffMin: min, BackoffMax: max}
	if max > queue.MaxBackoff {
		return queue.Policy{}, fmt.Errorf("%q: at most %v", s, queue.MaxBackoff)
	}
	return p, nil
}

func badBackoff(s string) error {
	_, err := parseBackoff(s)
	return err
}
