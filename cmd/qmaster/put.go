package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
	"github.com/vmihailenco/msgpack/v5"
)

type putOptions struct {
	IO     *factory
	Client clientOptions

	Queue   string
	Items   []string
	ReplyTo string
	Timeout time.Duration
	IDs     bool
	Batch   int

	Delay    time.Duration
	At       string
	Priority int
	Key      string
	at       time.Time
}

// batchBytes bounds the input text sent in one put, well below the
// default message size limit.
const batchBytes = 4 << 20

func newCmdPut(f *factory, runF func(*putOptions) error) *cobra.Command {
	opts := &putOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "put QUEUE [ITEM...]",
		Short: "Add items to a queue",
		Long: `Add items to QUEUE, creating it if needed. The items are the arguments
or, if there are none, the lines of standard input (blank lines are
skipped). Each item that is valid JSON is sent as that value (42, 1.5,
true, null, "text", [1,2], {"a":1}), and an item that is NaN, Infinity or
-Infinity as that float, as get prints it (a number beyond a float's
range, 1e400, is infinite, as Python's json module reads it); anything
else as a plain string, so hello is "hello", or as bytes if it is not
UTF-8 (get prints those in base64).

Items are sent in batches of --batch. A summary goes to stderr; with --ids
the task IDs are printed on stdout, one per line.

A queue at the master's --max-queue-len takes only what fits: put sends a
batch that does not fit in smaller parts, down to one item, and waits for
room up to --timeout (default 0: none). It then fails with "queue full",
having put the items that fit (their IDs printed with --ids).

--delay or --at hides the tasks from workers until then (an --at in the
past runs them at once); they join the back of the queue when due.
--priority 0-9 hands them out before lower priorities (strictly: a steady
stream of high-priority tasks keeps lower ones waiting). --key makes a
put of one item idempotent: a second put with the same key within the
master's --dedup-window (2m by default) adds nothing and prints the first
task's ID, so a put retried after a timeout never runs twice.

Given several --server addresses (gateways to one cluster), or a host name
with the addresses of several hosts (an IPv4 and an IPv6 address are one
host), put carries on through another when the one it uses dies, trying
for up to a minute. Each batch is put under a request ID unique to the
run (unless --key names the one item's key; the master keeps each for
its --dedup-window), so a batch whose put was cut off is put again and
stored once.`,
		Example: `  qmaster put jobs 1 2 3
  qmaster put jobs '{"url": "https://example.com"}'
  seq 1 1000 | qmaster put jobs
  qmaster put jobs --ids hello > ids.txt
  qmaster put reminders --delay 30s '{"to": "ann"}'
  qmaster put reports --at 2026-12-24T10:00:00Z xmas
  qmaster put jobs --priority 9 urgent
  qmaster put payments --key order-1017 '{"order": 1017}'`,
		Args: args(1, -1, "QUEUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Queue, opts.Items = args[0], args[1:]
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if opts.Timeout < 0 {
				return usageErrorf("--timeout must not be negative")
			}
			if opts.Batch < 1 {
				return usageErrorf("--batch must be at least 1")
			}
			if cmd.Flags().Changed("delay") && cmd.Flags().Changed("at") {
				return usageErrorf("give --delay or --at, not both")
			}
			if cmd.Flags().Changed("key") && opts.Key == "" {
				return usageErrorf("--key must not be empty: give the item's idempotency key, or drop --key")
			}
			if err := opts.checkSchedule(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return putRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	fl := cmd.Flags()
	fl.StringVar(&opts.ReplyTo, "reply-to", "", "queue that receives the results of these tasks")
	fl.DurationVar(&opts.Timeout, "timeout", 0, "how long to wait for room in a queue at its --max-queue-len (0: put what fits, then fail at once)")
	fl.BoolVar(&opts.IDs, "ids", false, "print the task IDs on stdout, one per line")
	fl.IntVar(&opts.Batch, "batch", 1000, "items per put call")
	fl.DurationVar(&opts.Delay, "delay", 0, "hide the tasks from workers for this long (e.g. 30s, 2h)")
	fl.StringVar(&opts.At, "at", "", "hide the tasks from workers until this time (RFC 3339, e.g. 2026-12-24T10:00:00Z)")
	fl.IntVar(&opts.Priority, "priority", 0, "0 to 9; higher priorities are handed out first")
	fl.StringVar(&opts.Key, "key", "", "idempotency key of a put of one item (at most 256 bytes)")
	return cmd
}

// checkSchedule checks --delay, --at, --priority and --key.
func (o *putOptions) checkSchedule() error {
	switch {
	case o.Delay < 0:
		return usageErrorf("--delay must not be negative")
	case o.Delay > 0 && o.At != "":
		return usageErrorf("give --delay or --at, not both")
	case o.Priority < 0 || o.Priority > queue.MaxPriority:
		return usageErrorf("--priority must be 0 to %d, got %d", queue.MaxPriority, o.Priority)
	case len(o.Key) > queue.MaxKeyLen:
		return usageErrorf("--key is at most %d bytes, got %d", queue.MaxKeyLen, len(o.Key))
	case o.Key != "" && len(o.Items) != 1:
		return usageErrorf("--key makes a put of one item idempotent: give exactly one ITEM")
	}
	if o.At != "" {
		t, err := time.Parse(time.RFC3339, o.At)
		if err != nil {
			return usageErrorf("--at %q: want an RFC 3339 time such as 2026-12-24T10:00:00Z", o.At)
		}
		o.at = t
	}
	return nil
}

func putRun(ctx context.Context, opts *putOptions) error {
	conn, err := dialProducer(ctx, &opts.Client, opts.IO, "put")
	if err != nil {
		return err
	}
	defer conn.close()

	p := &putter{conn: conn, queue: opts.Queue,
		opts: wire.PutOptions{ReplyTo: opts.ReplyTo, Delay: opts.Delay, At: opts.at, Priority: opts.Priority}}
	if opts.Key != "" {
		p.opts.Keys = []string{opts.Key}
	}
	put := func(batch []inputLine) (int, error) {
		raw := make([]msgpack.RawMessage, len(batch))
		for i, l := range batch {
			b, err := wire.Encode(jsonval.Parse(l.Text))
			if err != nil {
				return 0, fmt.Errorf("item %d: %w", l.N, err)
			}
			raw[i] = b
		}
		rid := conn.requestID(batch)
		if opts.Key != "" {
			rid = "" // the key stands for the one item
		}
		// Stored or not, a batch cut off with its connection is put again
		// through another gateway, under the same request ID or key (see
		// producerConn). A batch that the queue is too full for goes in in
		// parts, as they fit, waiting for room up to --timeout.
		p.until = time.Now().Add(opts.Timeout)
		ids, err := p.putWaiting(ctx, raw, rid)
		if opts.IDs {
			for _, id := range ids {
				if _, err := fmt.Fprintln(opts.IO.Out, id); err != nil {
					return len(ids), err
				}
			}
		}
		if errors.Is(err, wire.ErrQueueFull) {
			err = &queueFullError{queue: opts.Queue, waited: opts.Timeout}
		}
		return len(ids), err
	}

	total := 0
	var putErr error
	if len(opts.Items) > 0 {
		for start := 0; start < len(opts.Items) && putErr == nil; start += opts.Batch {
			end := min(start+opts.Batch, len(opts.Items))
			batch := make([]inputLine, 0, end-start)
			for i, item := range opts.Items[start:end] {
				batch = append(batch, inputLine{N: start + i + 1, Text: item})
			}
			var n int
			n, putErr = put(batch)
			total += n
		}
	} else {
		if opts.IO.StdinTTY {
			fmt.Fprintln(opts.IO.ErrOut, "Reading items from standard input, one per line; end with Ctrl-D.")
		}
		putErr = putLines(ctx, opts, put, &total)
	}
	if putErr != nil {
		if errors.Is(putErr, wire.ErrUnavailable) {
			// A cluster that did not confirm a put may yet store it,
			// once it has a leader again: a put sent again without a
			// key would then store it twice.
			advice := "check before putting it again (qmaster inspect, peek)"
			switch {
			case opts.Key != "":
				advice = "put it again with the same --key within the master's --dedup-window to store it once"
			case len(opts.Items) == 1:
				advice += ", or put it with --key"
			}
			putErr = fmt.Errorf("%w; the last batch may still be stored (the cluster did not confirm it): %s", putErr, advice)
		}
		if total > 0 {
			return fmt.Errorf("put into %s: %w (after %d items were put)", opts.Queue, putErr, total)
		}
		return fmt.Errorf("put into %s: %w", opts.Queue, putErr)
	}
	if p.repeats > 0 { // the --key item was stored before this put
		fmt.Fprintf(opts.IO.ErrOut, "put nothing into %s: an item with key %q is stored already (within the master's --dedup-window)\n", opts.Queue, opts.Key)
		return nil
	}
	fmt.Fprintf(opts.IO.ErrOut, "put %d %s into %s\n", total, plural(total, "item", "items"), opts.Queue)
	return nil
}

// putLines puts the lines of the input in batches as they arrive.
func putLines(ctx context.Context, opts *putOptions, put func([]inputLine) (int, error), total *int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lr := readLines(ctx, opts.IO.In, opts.Batch, batchBytes)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case batch, ok := <-lr.batches:
			if !ok {
				<-lr.done
				return lr.err
			}
			n, err := put(batch)
			*total += n
			if err != nil {
				return err // cancel stops the reader
			}
		}
	}
}

// queueFullError is wire.ErrQueueFull as put reports it: what to do.
type queueFullError struct {
	queue  string
	waited time.Duration // --timeout
}

func (e *queueFullError) Error() string {
	if e.waited == 0 {
		return fmt.Sprintf("queue %s is full (its --max-queue-len); put waits for room with --timeout", e.queue)
	}
	return fmt.Sprintf("queue %s is still full after %s (its --max-queue-len); give put a longer --timeout, or workers to drain it", e.queue, e.waited)
}

func (e *queueFullError) Unwrap() error { return wire.ErrQueueFull }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
