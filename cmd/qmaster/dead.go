package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

type deadOptions struct {
	IO     *factory
	Client clientOptions

	Queue string
	N     int
	JSON  bool
}

func newCmdDead(f *factory, runF func(*deadOptions) error) *cobra.Command {
	opts := &deadOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "dead QUEUE [flags]",
		Short: "List the dead tasks of a queue with their last errors",
		Long: `List the first -n tasks of QUEUE's dead-letter queue (QUEUE.dead): the
tasks that failed --max-attempts times, with the error of their last
attempt (the table shows its last line, the one a traceback ends with;
--json all of it). They stay there until requeued (qmaster requeue), dropped
(qmaster drop) or purged (qmaster purge QUEUE.dead).

With --json, print one JSON object per line, as qmaster peek does: a task
whose payload cannot be printed at all is named on stderr, the others are
printed, and dead exits with status 1.`,
		Example: `  qmaster dead jobs
  qmaster dead jobs -n 100 --json | jq -r .last_error | sort | uniq -c`,
		Args: args(1, 1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue = strings.TrimSuffix(args[0], queue.DeadSuffix)
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if opts.N < 1 {
				return usageErrorf("-n must be at least 1")
			}
			if runF != nil {
				return runF(opts)
			}
			return deadRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().IntVarP(&opts.N, "n", "n", 20, "most tasks to show")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print one JSON object per task")
	return cmd
}

// maxPayloadCell is how much of a payload the table shows, maxErrorCell
// of a last error's last line.
const (
	maxPayloadCell = 60
	maxErrorCell   = 100
)

// lastLine returns the last line of s that is not blank, marked with "..."
// when lines came before it: a traceback's last line says what failed.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if len(lines) > 1 {
		return "..." + last
	}
	return last
}

func deadRun(ctx context.Context, opts *deadOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "dead")
	if err != nil {
		return err
	}
	defer c.Close()
	dq := queue.DeadLetterName(opts.Queue)
	tasks, err := c.Peek(ctx, dq, opts.N)
	if errors.Is(err, wire.ErrUnknownQueue) {
		tasks, err = nil, nil // no task ever died there
	}
	if err != nil {
		return fmt.Errorf("queue %s: %w", dq, err)
	}
	if len(tasks) == 0 {
		fmt.Fprintf(opts.IO.ErrOut, "(no dead tasks in %s)\n", opts.Queue)
		return nil
	}
	if opts.JSON {
		unprinted := 0
		for _, t := range tasks {
			p, err := jsonval.AppendPayloadAllowNaN(nil, t.Payload)
			if err != nil {
				fmt.Fprintf(opts.IO.ErrOut, "qmaster dead: task %d: %v\n", t.ID, err)
				unprinted++
				continue
			}
			pt := peekedTask{ID: t.ID, Attempt: t.Attempt, Enqueued: t.Enqueued, ReplyTo: t.ReplyTo, LastError: t.LastError, Priority: t.Priority}
			if err := writePeeked(opts.IO.Out, pt, p); err != nil {
				return err
			}
		}
		if unprinted > 0 {
			return fmt.Errorf("%d of %d %s could not be printed", unprinted, len(tasks), plural(len(tasks), "task", "tasks"))
		}
		return nil
	}
	tw := newTable(opts.IO.Out)
	fmt.Fprintln(tw, "ID\tATTEMPTS\tAGE\tLAST ERROR\tPAYLOAD")
	now := time.Now()
	for _, t := range tasks {
		p, err := jsonval.AppendPayloadAllowNaN(nil, t.Payload)
		payload := string(p)
		if err != nil {
			payload = "(" + err.Error() + ")"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\n", t.ID, t.Attempt, humanAge(now.Sub(t.Enqueued)),
			cell(lastLine(t.LastError), maxErrorCell), cell(payload, maxPayloadCell))
	}
	return tw.Flush()
}

// cell makes s fit one table cell: one line, tabs as spaces, and at most
// limit runes (0: no limit).
func cell(s string, limit int) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "-"
	}
	if limit > 0 && utf8.RuneCountInString(s) > limit {
		r := []rune(s)
		s = string(r[:limit-1]) + "…"
	}
	return s
}
