package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qm-dev/qm/wire"
)

type deleteOptions struct {
	IO     *factory
	Client clientOptions

	Queue       string
	CancelTasks bool
}

func newCmdDelete(f *factory, runF func(*deleteOptions) error) *cobra.Command {
	opts := &deleteOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "delete QUEUE",
		Short: "Remove a queue and every task in it",
		Long: `Remove QUEUE with its ready and leased tasks. Workers holding leased
tasks of it can no longer acknowledge them. Its dead-letter queue,
QUEUE.dead, is a queue of its own: delete it separately.

With --cancel-tasks, the tasks of any queue that name QUEUE as their
reply queue and were put before the delete are cancelled as well: the
master drops each unrun when a worker would take it, since no one waits
for its result any more. Tasks already running finish; their results go
nowhere. A map that ends deletes its private reply queue so.`,
		Example: `  qmaster delete jobs
  qmaster delete jobs.dead
  qmaster delete my-results --cancel-tasks`,
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
	cmd.Flags().BoolVar(&opts.CancelTasks, "cancel-tasks", false, "also cancel the tasks not yet handed out that name QUEUE as their reply queue")
	addClientFlags(cmd, &opts.Client)
	return cmd
}

func deleteRun(ctx context.Context, opts *deleteOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "delete")
	if err != nil {
		return err
	}
	defer c.Close()
	var cancelled bool
	if opts.CancelTasks {
		cancelled, err = c.DeleteCancelling(ctx, opts.Queue)
	} else {
		err = c.Delete(ctx, opts.Queue)
	}
	const older = "the master is older than --cancel-tasks: no task was cancelled"
	switch {
	case opts.CancelTasks && !cancelled && err == nil:
		return fmt.Errorf("deleted queue %s, but %s", opts.Queue, older)
	case opts.CancelTasks && !cancelled && errors.Is(err, wire.ErrUnknownQueue):
		return fmt.Errorf("queue %s: %w; %s", opts.Queue, err, older)
	}
	if cancelled && errors.Is(err, wire.ErrUnknownQueue) {
		fmt.Fprintf(opts.IO.ErrOut, "no queue %s to delete; the tasks waiting to reply to it are cancelled\n", opts.Queue)
		return nil
	}
	if cancelled && err != nil {
		return fmt.Errorf("queue %s: %w (the tasks waiting to reply to it are cancelled all the same)", opts.Queue, err)
	}
	if err != nil {
		return fmt.Errorf("queue %s: %w", opts.Queue, err)
	}
	if cancelled {
		fmt.Fprintf(opts.IO.ErrOut, "deleted queue %s; the tasks waiting to reply to it are cancelled\n", opts.Queue)
	} else {
		fmt.Fprintf(opts.IO.ErrOut, "deleted queue %s\n", opts.Queue)
	}
	return nil
}
