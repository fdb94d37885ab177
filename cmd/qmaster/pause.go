package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

type pauseOptions struct {
	IO     *factory
	Client clientOptions

	Queues []string
	Resume bool
}

// newCmdPause returns the pause command, or with resume the resume
// command: the same options and connection, the opposite action.
func newCmdPause(f *factory, resume bool, runF func(*pauseOptions) error) *cobra.Command {
	opts := &pauseOptions{IO: f, Resume: resume}
	cmd := &cobra.Command{
		Use:   "pause QUEUE... [flags]",
		Short: "Stop queues from handing out tasks",
		Long: `Pause each QUEUE: it hands out no task until resumed, so workers wait
as if it were empty, while producers still put tasks in and tasks already
taken are still acknowledged. Pausing a queue that does not exist yet
creates it. A pause lasts until qmaster resume: a master with --data-dir,
or a cluster, keeps it over restarts; a master without one forgets it when
it stops, with its queues. Deleting a queue ends its pause.`,
		Example: `  qmaster pause jobs
  qmaster resume jobs`,
		Args: args(1, -1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queues = args
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return pauseRun(cmd.Context(), opts)
		},
	}
	if resume {
		cmd.Use = "resume QUEUE... [flags]"
		cmd.Short = "Let paused queues hand out tasks again"
		cmd.Long = `Resume each paused QUEUE: its ready tasks go to the workers waiting for
them at once.`
		cmd.Example = `  qmaster resume jobs`
	}
	addClientFlags(cmd, &opts.Client)
	return cmd
}

func pauseRun(ctx context.Context, opts *pauseOptions) error {
	verb := "pause"
	if opts.Resume {
		verb = "resume"
	}
	c, err := opts.Client.connect(ctx, opts.IO, "admin", verb)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, q := range opts.Queues {
		if opts.Resume {
			err = c.Resume(ctx, q)
		} else {
			err = c.Pause(ctx, q)
		}
		if err != nil {
			return fmt.Errorf("queue %s: %w", q, err)
		}
		fmt.Fprintf(opts.IO.ErrOut, "%sd %s\n", verb, q)
	}
	return nil
}
