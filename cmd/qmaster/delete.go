package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

type deleteOptions struct {
	IO     *factory
	Client clientOptions

	Queue string
}

func newCmdDelete(f *factory, runF func(*deleteOptions) error) *cobra.Command {
	opts := &deleteOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "delete QUEUE",
		Short: "Remove a queue and every task in it",
		Long: `Remove QUEUE with its ready and leased tasks. Workers holding leased
tasks of it can no longer acknowledge them. Its dead-letter queue,
QUEUE.dead, is a queue of its own: delete it separately.`,
		Example: `  qmaster delete jobs
  qmaster delete jobs.dead`,
		Args: args(1, 1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue = args[0]
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return deleteRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	return cmd
}

func deleteRun(ctx context.Context, opts *deleteOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "delete")
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Delete(ctx, opts.Queue); err != nil {
		return fmt.Errorf("queue %s: %w", opts.Queue, err)
	}
	fmt.Fprintf(opts.IO.ErrOut, "deleted queue %s\n", opts.Queue)
	return nil
}
