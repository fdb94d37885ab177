package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

type queuesOptions struct {
	IO     *factory
	Client clientOptions
}

func newCmdQueues(f *factory, runF func(*queuesOptions) error) *cobra.Command {
	opts := &queuesOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "queues",
		Short: "List the names of the queues of a master",
		Long:  `Print the name of every queue of the master, one per line, sorted.`,
		Example: `  qmaster queues
  qmaster queues | grep '\.dead$'`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return queuesRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	return cmd
}

func queuesRun(ctx context.Context, opts *queuesOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "queues")
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := c.Queues(ctx)
	if err != nil {
		return fmt.Errorf("list queues: %w", err)
	}
	for _, n := range names {
		if _, err := fmt.Fprintln(opts.IO.Out, n); err != nil {
			return err
		}
	}
	return nil
}
