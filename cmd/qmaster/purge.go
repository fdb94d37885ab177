package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

type purgeOptions struct {
	IO     *factory
	Client clientOptions

	Queue string
}

func newCmdPurge(f *factory, runF func(*purgeOptions) error) *cobra.Command {
	opts := &purgeOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "purge QUEUE",
		Short: "Drop the ready and delayed tasks of a queue",
		Long: `Drop every ready task of QUEUE, and every task not yet due (delayed, or
retrying after a failure). Tasks leased to workers are not touched, and
the queue itself stays. Through a gateway of a cluster (qmaster --nats or
--cluster-listen) the leased tasks go too: JetStream purges a stream
whole, and their completions are then refused.`,
		Example: `  qmaster purge jobs
  qmaster purge jobs.dead`,
		Args: args(1, 1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue = args[0]
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return purgeRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	return cmd
}

func purgeRun(ctx context.Context, opts *purgeOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "purge")
	if err != nil {
		return err
	}
	defer c.Close()
	n, err := c.Purge(ctx, opts.Queue)
	if err != nil {
		return fmt.Errorf("queue %s: %w", opts.Queue, err)
	}
	fmt.Fprintf(opts.IO.ErrOut, "purged %d %s (ready or delayed) from %s\n", n, plural(n, "task", "tasks"), opts.Queue)
	return nil
}
