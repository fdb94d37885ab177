package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/spf13/cobra"
)

type peekOptions struct {
	IO     *factory
	Client clientOptions

	Queue   string
	N       int
	Delayed bool
}

func newCmdPeek(f *factory, runF func(*peekOptions) error) *cobra.Command {
	opts := &peekOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "peek QUEUE [flags]",
		Short: "Show the first ready tasks of a queue without taking them",
		Long: `Print the first -n ready tasks of QUEUE, one JSON object per line:
{"id":..,"attempt":..,"enqueued":..,"payload":..}, plus "reply_to",
"last_error" and "priority" when set. The tasks stay in the queue.

With --delayed, the first -n tasks not yet due instead, by due time, each
with its "due" time: delayed puts, and failed tasks waiting out their
retry backoff ("attempt" > 0).

A payload prints as get prints it. A task whose payload cannot be printed
at all is named on stderr; the others are printed, and peek exits with
status 1.`,
		Example: `  qmaster peek jobs
  qmaster peek jobs.dead -n 100 | jq -r .last_error
  qmaster peek jobs --delayed`,
		Args: args(1, 1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue = args[0]
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if opts.N < 1 {
				return usageErrorf("-n must be at least 1")
			}
			if runF != nil {
				return runF(opts)
			}
			return peekRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().IntVarP(&opts.N, "n", "n", 10, "most tasks to show")
	cmd.Flags().BoolVar(&opts.Delayed, "delayed", false, "show the tasks not yet due, by due time")
	return cmd
}

// peekedTask is how peek prints a task.
type peekedTask struct {
	ID        uint64          `json:"id"`
	Attempt   int             `json:"attempt"`
	Enqueued  time.Time       `json:"enqueued"`
	ReplyTo   string          `json:"reply_to,omitempty"`
	LastError string          `json:"last_error,omitempty"`
	Priority  int             `json:"priority,omitempty"`
	Due       time.Time       `json:"due,omitzero"`
	Payload   json.RawMessage `json:"payload"`
}

func peekRun(ctx context.Context, opts *peekOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "peek")
	if err != nil {
		return err
	}
	defer c.Close()
	peek := c.Peek
	if opts.Delayed {
		peek = c.Delayed
	}
	tasks, err := peek(ctx, opts.Queue, opts.N)
	if err != nil {
		return fmt.Errorf("queue %s: %w", opts.Queue, err)
	}
	unprinted := 0
	for _, t := range tasks {
		p, err := jsonval.AppendPayloadAllowNaN(nil, t.Payload)
		if err != nil {
			fmt.Fprintf(opts.IO.ErrOut, "qmaster peek: task %d: %v\n", t.ID, err)
			unprinted++
			continue
		}
		pt := peekedTask{ID: t.ID, Attempt: t.Attempt, Enqueued: t.Enqueued, ReplyTo: t.ReplyTo, LastError: t.LastError,
			Priority: t.Priority, Due: t.Due}
		if err := writePeeked(opts.IO.Out, pt, p); err != nil {
			return err
		}
	}
	if len(tasks) == 0 {
		kind := "ready"
		if opts.Delayed {
			kind = "delayed"
		}
		fmt.Fprintf(opts.IO.ErrOut, "(no %s tasks in %s)\n", kind, opts.Queue)
	}
	if unprinted > 0 {
		return fmt.Errorf("%d of %d %s could not be printed", unprinted, len(tasks), plural(len(tasks), "task", "tasks"))
	}
	return nil
}

// writePeeked writes pt with payload p as writeJSON writes pt. p goes in
// after the encoder, which refuses the NaN or Infinity it may hold (get's
// rendering); payload is pt's last field.
func writePeeked(w io.Writer, pt peekedTask, p []byte) error {
	var buf bytes.Buffer
	pt.Payload = json.RawMessage("null")
	if err := writeJSON(&buf, pt, false); err != nil {
		return err
	}
	line, ok := bytes.CutSuffix(buf.Bytes(), []byte("null}\n"))
	if !ok {
		return fmt.Errorf("task %d: payload not last in %s", pt.ID, buf.Bytes()) // a change to peekedTask
	}
	_, err := w.Write(append(append(line, p...), "}\n"...))
	return err
}
