package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/wire"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/vmihailenco/msgpack/v5"
)

type mapOptions struct {
	IO     *factory
	Client clientOptions

	Tasks   string
	Results string
	Batch   int
	Timeout time.Duration

	// checkEvery is how often a map that waits for results in vain looks
	// into its tasks queue; 0 is waitCheckEvery. Tests shorten it.
	checkEvery time.Duration
}

func newCmdMap(f *factory, runF func(*mapOptions) error) *cobra.Command {
	opts := &mapOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "map [flags] < INPUT",
		Short: "Run every input line as a task and print the results in input order",
		Long: `Read items from standard input, one per line (blank lines are skipped,
each item parsed as for put), submit each as a task to --tasks, wait for
every result and print each as one line of JSON, in input order: output
line k is the result of the k-th item. Workers (qworker) must be serving
--tasks.

Tasks are submitted in batches as the input is read, and results are
collected and printed at the same time, so long inputs stream through. Results go to a private queue, map-<random>, deleted
at the end, unless --results names one; items map takes from it that are
not results of its tasks are put back (said on stderr): while it has had
no result of its own for half a second (another map may read the same
queue and wait for them), and at its end.

A task that fails for good (after the master's --max-attempts) prints null
on its line and is reported on stderr; map then exits with status 1. A
progress bar is shown on stderr when it is a terminal.

A map stopped early (--timeout, an interrupt, an error) prints the results
that came, still in input order: up to the last of them, each line whose
result had not come gets null, and stderr names its input line ("has no
result yet"); the lines after it are not printed. The final message says
how many results came. Stopped by a signal (Ctrl-C, SIGTERM, SIGHUP as its
terminal goes) or by its output's reader going away (| head), it deletes
its own result queue and cancels its tasks not yet handed out, as at any
end (with --results, the queue is kept and nothing is cancelled: its
results keep coming there);
it then exits 130 after SIGINT, 143 after SIGTERM (as a shell reports a
command a signal ended, so that a script's loop stops too), and 141,
silently, when its reader went.

While results are due and none has come for 5s, map looks at --tasks (a
stats call, every 5s at most): if the queue was deleted (gone at two
looks in a row), map fails, saying how many of its tasks went with it;
if tasks sit there ready and none is taken (no worker connected, none
serving --tasks, or the queue paused), or the queue holds none of them any
more (purged; or their results were taken by another connection, one lost
with its gateway, and come back when their leases run out), it says so
once on stderr and goes on waiting.

Given several --server addresses (gateways to one cluster), or a host name
with the addresses of several hosts (an IPv4 and an IPv6 address are one
host), map carries on through another when the one it uses dies, trying
for up to a minute: the cluster keeps the tasks and results. While a
gateway answers that the queues are unavailable (the cluster electing a
leader, or short of a majority of its nodes), map waits for them with no
limit but --timeout's, saying so on stderr after 5s and every 30s. A batch whose put was cut off,
or (through one gateway too) refused while the cluster elected a leader, is put
again under the same request ID, so the master stores none of its
tasks twice (within its --dedup-window). Results are taken under a
lease and acked once received, so none is lost with a connection; one
received twice is ignored.`,
		Example: `  seq 1 100 | qmaster map --tasks squares
  qmaster map --tasks fetch --timeout 10m < urls.txt > pages.jsonl
  paste inputs.txt <(qmaster map < inputs.txt)   # inputs beside results (no blank lines)`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if opts.Batch < 1 {
				return usageErrorf("--batch must be at least 1")
			}
			if opts.Timeout < 0 {
				return usageErrorf("--timeout must not be negative (0 waits forever)")
			}
			if opts.Tasks == "" {
				return usageErrorf("--tasks must name a queue")
			}
			if opts.Results != "" && opts.Results == opts.Tasks {
				return usageErrorf("--results must differ from --tasks")
			}
			if runF != nil {
				return runF(opts)
			}
			return mapRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	fl := cmd.Flags()
	fl.StringVar(&opts.Tasks, "tasks", wire.DefaultTaskQueue, "queue to submit the tasks to")
	fl.StringVar(&opts.Results, "results", "", "queue to collect the results from (default: a private queue, deleted at the end)")
	fl.IntVar(&opts.Batch, "batch", 1000, "tasks per put call")
	fl.DurationVar(&opts.Timeout, "timeout", 0, "give up after this long overall (0: wait forever)")
	return cmd
}

// Collecting results.
const (
	resultBatch = 1000
	resultWait  = time.Second
)

// submitted reports a batch of tasks put by the producer: the i-th input
// got ids[i].
type submitted struct {
	ids    []uint64
	inputs []inputLine
}

// received is an item the collector took from the result queue: the
// result it holds, if it is one (ok), and the item itself, to be put back
// if it is not this map's.
type received struct {
	wire.Result
	item *wire.Task
	ok   bool
}

// pendingLine is an input waiting for its result to be printed.
type pendingLine struct {
	in     inputLine
	id     uint64 // its task's
	result wire.Result
	done   bool // result is set
}

// lineRing is a FIFO of pending lines in a ring that doubles when full,
// so that each line is copied only when the ring grows past its size.
type lineRing struct {
	buf  []pendingLine // len is 0 or a power of two
	head int           // index in buf of the front
	n    int
}

func (r *lineRing) len() int { return r.n }

// at is the i-th line from the front, 0 <= i < r.len().
func (r *lineRing) at(i int) *pendingLine {
	return &r.buf[(r.head+i)&(len(r.buf)-1)]
}

func (r *lineRing) push(p pendingLine) {
	if r.n == len(r.buf) {
		grown := make([]pendingLine, max(2*len(r.buf), 64))
		k := copy(grown, r.buf[r.head:])
		copy(grown[k:], r.buf[:r.head])
		r.buf, r.head = grown, 0
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = p
	r.n++
}

// popFront removes the front line and returns it; the ring lets go of its
// text and value.
func (r *lineRing) popFront() pendingLine {
	p := r.buf[r.head]
	r.buf[r.head] = pendingLine{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return p
}

// mapState is the collation of results into input order. It is owned by
// the goroutine that runs mapRun.
type mapState struct {
	opts *mapOptions
	out  *bufio.Writer
	bar  *progressbar.ProgressBar

	index idIndex // task id → its position in the input, until printed
	// ours holds every task this map submitted, never forgotten: it tells
	// a result received twice from one that is not this map's.
	ours idIndex
	// window holds the inputs from position next on, each with its
	// result once it came, until printed: a ring rather than maps keyed
	// by position, which were a tenth of map's time, or a slice appended
	// to at the back and cut at the front, whose regrowth copied the
	// whole window over and over (a third of map's time).
	window     lineRing
	early      map[uint64]received // results that beat their put's reply
	earlyAgain []received          // more of them, for task IDs early holds
	total      int                 // tasks submitted so far
	next       int                 // position of the next line to print
	arrived    int                 // results of tasks submitted: printed, or held in window
	reading    bool                // the producer may submit more

	// check, if set, is called every checkEvery while results are
	// outstanding and none came since the last call. It returns a note
	// for stderr, or why map cannot go on.
	check      func(ctx context.Context, submitted, outstanding int) (string, error)
	checkEvery time.Duration

	failed  int
	ignored int          // results of this map's tasks received twice
	foreign []*wire.Task // items taken from the result queue that are not this map's
	// giveBack, if set (a --results queue, which another map may read),
	// puts foreign items back while this map waits for its results: the
	// other map may be waiting for them, and kept until this one ended,
	// each map could hold the other's for ever.
	giveBack  func([]*wire.Task)
	giveBacks int  // calls of giveBack
	writeErr  bool // writing the output failed
}

func mapRun(ctx context.Context, opts *mapOptions) (err error) {
	// A map ends cleanly, its result queue deleted and its tasks
	// cancelled, when its terminal goes (SIGHUP, which a master takes to
	// reload its ACL: hence here, not in main), and when its output's
	// reader does (| head): the write fails with EPIPE rather than the
	// process dying of SIGPIPE before it cleans up.
	if !signal.Ignored(syscall.SIGHUP) { // under nohup, a hang-up is no end
		var stopHUP context.CancelFunc
		ctx, stopHUP = signal.NotifyContext(ctx, syscall.SIGHUP)
		defer stopHUP()
	}
	defer catchBrokenPipe()()
	conn, err := dialProducer(ctx, &opts.Client, opts.IO, "map")
	if err != nil {
		return err
	}
	defer conn.close()
	// Interrupted, map stops connecting again at once (its collector's
	// tries use a context of their own), so that its clean-up does not
	// wait for them.
	defer context.AfterFunc(ctx, conn.abandon)()

	var st *mapState // once made: the tasks it submitted, and their results
	results := opts.Results
	if results == "" {
		results = "map-" + randomHex(6)
		defer func() {
			// The run's ctx may be over; cleaning up deserves its own.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			c, _ := conn.client()
			_, derr := c.DeleteCancelling(dctx, results) // no one waits for the tasks left either
			left := ""                                   // what the failed delete leaves running
			if st != nil && st.total > st.arrived {
				n := st.total - st.arrived
				left = fmt.Sprintf("; its %d %s not answered still run, for no one", n, plural(n, "task", "tasks"))
				if connectionGone(derr) {
					left = fmt.Sprintf("; its %d %s not answered were not cancelled: a master that keeps its queues runs them for no one",
						n, plural(n, "task", "tasks"))
				}
			}
			switch {
			case derr == nil || errors.Is(derr, wire.ErrUnknownQueue):
			case err == nil:
				fmt.Fprintf(opts.IO.ErrOut, "qmaster map: delete result queue %s: %v%s\n", results, derr, left)
			case errors.Is(err, wire.ErrPermissionDenied) && errors.Is(derr, wire.ErrPermissionDenied) && left == "":
				// The key's permissions stopped map: that they do not
				// let it delete the queue either adds nothing.
			case errors.Is(err, wire.ErrPermissionDenied) && errors.Is(derr, wire.ErrPermissionDenied):
				err = fmt.Errorf("%w (deleting result queue %s was refused too%s)", err, results, left)
			default: // after the cause, which main reports
				err = fmt.Errorf("%w (and delete result queue %s: %v%s)", err, results, derr, left)
			}
		}()
	}

	runCtx := ctx
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
	}
	// work ends the input reader and the producer, when done or on error.
	work, stop := context.WithCancel(runCtx)
	defer stop()
	// The collector is stopped by closing finish, between two gets, rather
	// than by cancelling a get in flight: the master would still run such
	// a get, taking results for no one, and recreating a private result
	// queue deleted meanwhile. killCollect is the last resort.
	collectCtx, killCollect := context.WithCancel(context.WithoutCancel(ctx))
	defer killCollect()
	finish := make(chan struct{})

	var (
		wg        sync.WaitGroup
		batches   = make(chan submitted)
		resultsCh = make(chan []received)
		errs      = make(chan error, 2)
		produced  = make(chan struct{})
		collected = make(chan struct{})
	)
	// The collector starts first: a result queue is created by its first
	// get, so no result published before then is lost either way.
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(collected)
		if err := collect(collectCtx, finish, conn, results, resultsCh); err != nil {
			errs <- err
		}
	}()
	lr := readLines(work, opts.IO.In, opts.Batch, batchBytes)
	go func() {
		defer wg.Done()
		defer close(produced)
		if err := produce(work, conn, opts, results, lr, batches); err != nil {
			errs <- err
		}
	}()

	st = newMapState(opts)
	if opts.Results != "" {
		st.giveBack = func(items []*wire.Task) {
			st.giveBacks++
			putBack(ctx, conn, results, items, opts.IO.ErrOut, st.giveBacks, true)
		}
	}
	watch := &tasksWatch{conn: conn, queue: opts.Tasks, results: results, told: make(map[string]bool)}
	st.check, st.checkEvery = watch.check, cmp.Or(opts.checkEvery, waitCheckEvery)
	err = st.loop(work, batches, resultsCh, produced, errs)
	stop()
	close(finish)
	var wakeID uint64
	if opts.Results == "" {
		// Wake the collector's get with an item no one else will read.
		wctx, cancel := context.WithTimeout(collectCtx, time.Second)
		c, _ := conn.client()
		if ids, err := c.PutRaw(wctx, results, []msgpack.RawMessage{msgpackNil}, wire.PutOptions{}); err == nil && len(ids) == 1 {
			wakeID = ids[0]
		}
		cancel()
	}
	// What the collector took meanwhile is taken for good: results of
	// lines still to print, or items to put back.
	kill := time.NewTimer(resultWait + 2*time.Second)
	for collecting := true; collecting; {
		select {
		case rs := <-resultsCh:
			for _, r := range rs {
				if wakeID == 0 || r.item.ID != wakeID {
					st.result(r)
				}
			}
		case <-collected:
			collecting = false
		case <-kill.C:
			killCollect()
		}
	}
	kill.Stop()
	wg.Wait()
	if st.reading && opts.Results == "" {
		// Stopped early, so the results waiting for their put's reply
		// are most likely this map's: not to be reported as another's.
		// (Those in a --results queue are put back all the same.)
		st.early, st.earlyAgain = nil, nil
	}
	st.endReading()
	nulls := 0
	if err != nil && !st.writeErr {
		// Results that came are printed, though map stops (see drain).
		nulls, _ = st.drain()
	}
	if st.bar != nil {
		_ = st.bar.Exit()
		fmt.Fprintln(opts.IO.ErrOut)
	}
	if ferr := st.out.Flush(); err == nil {
		err = ferr
	}
	if st.ignored > 0 {
		why := "received twice"
		if _, gen := conn.client(); gen > 0 {
			// Expected: results in flight when a connection was lost come
			// again.
			why = "received again after connecting again"
		}
		fmt.Fprintf(opts.IO.ErrOut, "qmaster map: ignored %d %s in %s %s (a task's result is printed once)\n",
			st.ignored, plural(st.ignored, "result", "results"), results, why)
	}
	if n := len(st.foreign); n > 0 && opts.Results == "" {
		fmt.Fprintf(opts.IO.ErrOut, "qmaster map: ignored %d %s in %s that this map did not submit\n", n, plural(n, "item", "items"), results)
	} else if n > 0 {
		putBack(ctx, conn, results, st.foreign, opts.IO.ErrOut, 0, false)
	}
	if st.giveBacks > 0 {
		fmt.Fprintf(opts.IO.ErrOut, "qmaster map: put back items of %s that this map did not submit while it waited, %d %s (does another map read %s too?)\n",
			results, st.giveBacks, plural(st.giveBacks, "time", "times"), results)
	}
	note := ""
	if nulls > 0 {
		note = fmt.Sprintf("; %d %s without a result printed as null, so that the others keep their input order (named above)",
			nulls, plural(nulls, "line", "lines"))
	}
	switch {
	case err == nil && st.failed > 0:
		return fmt.Errorf("%d of %d %s failed", st.failed, st.total, plural(st.total, "task", "tasks"))
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted with %d of %d results%s", st.arrived, st.total, note)
	case runCtx.Err() != nil:
		return fmt.Errorf("timed out after %s with %d of %d results%s", opts.Timeout, st.arrived, st.total, note)
	}
	return fmt.Errorf("%w%s", err, note)
}

func newMapState(opts *mapOptions) *mapState {
	return &mapState{
		opts:    opts,
		out:     bufio.NewWriterSize(opts.IO.Out, outBufferSize),
		early:   make(map[uint64]received),
		reading: true,
	}
}

// loop collates until every submitted task has its result printed, or the
// work ends.
func (st *mapState) loop(ctx context.Context, batches <-chan submitted, results <-chan []received, produced <-chan struct{}, errs <-chan error) error {
	var tick <-chan time.Time
	if st.check != nil {
		t := time.NewTicker(st.checkEvery)
		defer t.Stop()
		tick = t.C
	}
	seen := st.arrived // at the last tick
	// Foreign items no map waits for would go round for ever: each
	// giving back without a result of this map's between waits twice as
	// long for the next, up to giveBackAtMost.
	var (
		giveTimer *time.Timer
		giveTick  <-chan time.Time
	)
	giveEvery := giveBackEvery
	if st.giveBack != nil {
		giveTimer = time.NewTimer(giveEvery)
		defer giveTimer.Stop()
		giveTick = giveTimer.C
	}
	given := st.arrived // at the last giveTick
	for st.reading || st.next < st.total {
		select {
		case <-giveTick:
			switch {
			case st.arrived != given:
				giveEvery = giveBackEvery
			case len(st.foreign) > 0:
				st.giveBack(st.foreign)
				st.foreign = nil
				giveEvery = min(2*giveEvery, giveBackAtMost)
			}
			given = st.arrived
			giveTimer.Reset(giveEvery)
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case b := <-batches:
			st.submitted(b)
			// Results that beat the put's reply can be printed now.
			if err := st.flush(); err != nil {
				return err
			}
		case <-produced:
			// The producer has exited. Its batches are unbuffered, so all
			// have been received, and an error it hit is already queued.
			select {
			case err := <-errs:
				return err
			default:
			}
			produced = nil
			st.endReading()
			st.setBarMax()
		case rs := <-results:
			for _, r := range rs {
				st.result(r)
			}
			if err := st.flush(); err != nil {
				return err
			}
		case <-tick:
			// Looked into only while results are outstanding and none
			// has come for a while: no cost per result.
			if st.arrived == seen && st.arrived < st.total {
				note, err := st.check(ctx, st.total, st.total-st.arrived)
				if err != nil {
					return err
				}
				if note != "" {
					st.clearBar()
					fmt.Fprintf(st.opts.IO.ErrOut, "qmaster map: %s\n", note)
				}
			}
			seen = st.arrived
		}
	}
	return nil
}

func (st *mapState) submitted(b submitted) {
	st.index.add(b.ids, st.total)
	st.ours.add(b.ids, st.total)
	for i, id := range b.ids {
		st.window.push(pendingLine{in: b.inputs[i], id: id})
	}
	if len(st.early) > 0 {
		for _, id := range b.ids {
			if r, ok := st.early[id]; ok {
				delete(st.early, id)
				st.result(r)
			}
		}
	}
	st.total += len(b.ids)
	st.setBarMax()
}

// setBarMax sizes the progress bar to the tasks submitted, plus one while
// more may come: a bar that reaches its max finishes for good and would
// not move again.
func (st *mapState) setBarMax() {
	if !st.opts.IO.StderrTTY || st.total == 0 {
		return
	}
	max := st.total
	if st.reading {
		max++
	}
	if st.bar == nil {
		st.bar = newMapBar(st.opts.IO.ErrOut, max)
	} else {
		st.bar.ChangeMax(max)
	}
}

// result records r for its line, if it is the first result of a task
// map submitted and has not printed.
func (st *mapState) result(r received) {
	if !r.ok {
		st.foreign = append(st.foreign, r.item)
		return
	}
	pos, ok := st.index.lookup(r.TaskID)
	if ok && pos >= st.next && !st.window.at(pos-st.next).done {
		st.index.forget(r.TaskID)
		p := st.window.at(pos - st.next)
		p.result, p.done = r.Result, true
		st.arrived++
		return
	}
	if !ok {
		_, ok = st.ours.lookup(r.TaskID)
	}
	switch {
	case ok: // a second result of a task of this map
		st.ignored++
	case st.reading: // perhaps of a task whose put's reply is to come
		if _, again := st.early[r.TaskID]; again {
			st.earlyAgain = append(st.earlyAgain, r)
		} else {
			st.early[r.TaskID] = r
		}
	default:
		st.foreign = append(st.foreign, r.item)
	}
}

// endReading notes that no more tasks will be submitted: the early results
// left are of this map's tasks received twice, or not this map's.
func (st *mapState) endReading() {
	early, again := st.early, st.earlyAgain
	st.reading, st.early, st.earlyAgain = false, nil, nil
	for _, r := range early {
		st.result(r)
	}
	for _, r := range again {
		st.result(r)
	}
}

// flush prints the results that are next in input order.
func (st *mapState) flush() error {
	printed := 0
	for st.window.len() > 0 && st.window.at(0).done {
		p := st.window.popFront()
		st.next++
		printed++
		if err := st.print(p.result, p.in); err != nil {
			st.writeErr = true
			return &outputError{err}
		}
	}
	if printed == 0 {
		return nil
	}
	st.index.forgetBefore(st.next)
	if st.bar != nil && st.opts.IO.StdoutTTY {
		_ = st.bar.Clear() // results and the bar share the terminal
	}
	if err := st.out.Flush(); err != nil {
		st.writeErr = true
		return &outputError{err}
	}
	if st.bar != nil {
		_ = st.bar.Add(printed)
	}
	return nil
}

// drain prints, when map stops early, the results that came for lines
// behind one still without its result, keeping stdout's promise that
// output line k is the k-th input's: such a line gets null, as a failed
// task's does, and is named on stderr. Lines after the last result that
// came are not printed. drain returns how many lines it printed as null.
func (st *mapState) drain() (int, error) {
	last := st.window.len() - 1
	for last >= 0 && !st.window.at(last).done {
		last--
	}
	nulls := 0
	for range last + 1 {
		p := st.window.popFront()
		st.next++
		if p.done {
			if err := st.print(p.result, p.in); err != nil {
				return nulls, err
			}
			continue
		}
		nulls++
		st.clearBar()
		fmt.Fprintf(st.opts.IO.ErrOut, "qmaster map: task %d (input line %d: %s) has no result yet: null printed in its place\n",
			p.id, p.in.N, shorten(p.in.Text, 40))
		if _, err := st.out.WriteString("null\n"); err != nil {
			return nulls, err
		}
	}
	return nulls, st.out.Flush()
}

// clearBar clears the progress bar, if any, for a message on stderr.
func (st *mapState) clearBar() {
	if st.bar != nil {
		_ = st.bar.Clear()
	}
}

func (st *mapState) print(r wire.Result, in inputLine) error {
	// The line is rendered into the output's buffer, which takes it
	// without another copy when it fits.
	line := st.out.AvailableBuffer()
	reason := r.Error
	if reason == "" {
		var err error
		if line, err = jsonval.AppendPayloadAllowNaN(line, r.Value); err != nil {
			reason = "bad result: " + err.Error()
		}
	}
	if reason != "" {
		line = append(line[:0], "null"...)
	}
	if reason != "" {
		st.failed++
		if !strings.HasPrefix(reason, "failed") {
			reason = fmt.Sprintf("failed after %d %s: %s", r.Attempt, plural(r.Attempt, "attempt", "attempts"), reason)
		}
		st.clearBar()
		fmt.Fprintf(st.opts.IO.ErrOut, "qmaster map: task %d (input line %d: %s) %s\n", r.TaskID, in.N, shorten(in.Text, 40), reason)
	}
	st.out.Write(line)
	return st.out.WriteByte('\n')
}

// produce submits the input lines to the tasks queue as they are read.
func produce(ctx context.Context, conn *producerConn, opts *mapOptions, results string, lr *lineReader, out chan<- submitted) error {
	p := &putter{conn: conn, queue: opts.Tasks, opts: wire.PutOptions{ReplyTo: results}, waitUnavailable: true}
	for {
		var (
			batch []inputLine
			ok    bool
		)
		select {
		case <-ctx.Done():
			return nil
		case batch, ok = <-lr.batches:
		}
		if !ok {
			<-lr.done
			if lr.err != nil {
				return fmt.Errorf("read input: %w", lr.err)
			}
			return nil
		}
		raw, err := encodeLines(batch)
		if err != nil {
			return err
		}
		// Stored or not, a batch cut off with its connection is put again
		// through another gateway, under the same request ID (see
		// producerConn and putWaiting).
		ids, err := p.putWaiting(ctx, raw, conn.requestID(batch))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("put into %s: %w", opts.Tasks, err)
		}
		if len(ids) != len(batch) {
			return fmt.Errorf("put into %s: %d ids for %d tasks", opts.Tasks, len(ids), len(batch))
		}
		select {
		case out <- submitted{ids: ids, inputs: batch}:
		case <-ctx.Done():
			return nil
		}
	}
}

// encodeLines encodes each line's value as a payload, all into one buffer.
func encodeLines(batch []inputLine) ([]msgpack.RawMessage, error) {
	size := 0
	for _, l := range batch {
		size += len(l.Text) + 9
	}
	buf := make([]byte, 0, size)
	ends := make([]int, len(batch))
	for i, l := range batch {
		var err error
		if buf, err = appendPayload(buf, jsonval.Parse(l.Text)); err != nil {
			return nil, fmt.Errorf("input line %d: %w", l.N, err)
		}
		ends[i] = len(buf)
	}
	raw := make([]msgpack.RawMessage, len(batch))
	start := 0
	for i, end := range ends {
		raw[i] = buf[start:end:end]
		start = end
	}
	return raw, nil
}

// appendPayload appends v encoded as wire.Encode encodes it; strings and
// int64s, what most input lines are, without msgpack's reflection.
func appendPayload(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return msgp.AppendStr(b, x), nil
	case int64: // msgpack.Marshal writes an int64 in full: int 64
		return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(x)), nil
	}
	raw, err := wire.Encode(v)
	return append(b, raw...), err
}

// resultLease is the lease map takes results under when it may go on
// through another gateway: short, as map acks them the moment they
// arrive, so that results leased through a gateway that died come back
// soon.
const resultLease = 10 * time.Second

// unavailablePause is how long map waits before it calls again a master
// whose queues are unavailable for now.
const unavailablePause = 200 * time.Millisecond

// pause waits for d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// putter puts batches into a queue for map and put (putWaiting).
type putter struct {
	conn  *producerConn
	queue string
	// opts are the puts' options; putWaiting sets RequestID, Timeout and
	// Resent. Keys, if any, are those of a batch of one item.
	opts wire.PutOptions
	// until ends the wait for room in a queue at its max length; zero
	// waits as long as ctx allows.
	until time.Time
	// waitUnavailable waits for queues that a gateway answers are
	// unavailable, instead of failing.
	waitUnavailable bool
	// repeats counts the items of puts answered at their first send that
	// were not stored, their key having been seen (PutRawRepeats).
	repeats int
}

// putWaiting puts items, waiting for room until p.until (or as long as
// ctx allows) when the queue is at its maximum length, and through
// another gateway when the connection's is lost. A batch that the queue
// refuses as full is put again in halves: one larger than the queue's max
// length would never fit (and the producer does not know that length),
// and smaller puts fit sooner into a queue being drained.
//
// rid, if not empty, is the put's request ID: a put stored before its
// answer was lost adds nothing when it is put again, and gets the IDs of
// the tasks it stored. Its halves get IDs of their own, and so are new
// puts: a batch sent once without an answer (its connection lost, or the
// queues unavailable) may be stored, so it is not split, but put again
// whole until it fits, unless the queue's max length shows it never could.
// On an error it returns the IDs of the halves that were put.
func (p *putter) putWaiting(ctx context.Context, items []msgpack.RawMessage, rid string) ([]uint64, error) {
	unanswered := false // a send of items went unanswered: it may be stored
	for {
		var (
			ids     []uint64
			repeats int
		)
		sends := 0
		start := time.Now()
		opts := p.opts
		opts.RequestID = rid
		// The master waits for room a second at a time, so that a
		// gateway's engine that became unavailable meanwhile is noticed.
		opts.Timeout = time.Second
		if !p.until.IsZero() {
			opts.Timeout = min(opts.Timeout, max(0, time.Until(p.until)))
		}
		err := p.conn.call(ctx, func(c *wire.Client) (err error) {
			if sends++; sends > 1 {
				unanswered = true // the one before was cut off
			}
			opts.Resent = unanswered && rid != ""
			ids, repeats, err = c.PutRawRepeats(ctx, p.queue, items, opts)
			return err
		})
		if errors.Is(err, wire.ErrUnavailable) && ctx.Err() == nil && p.waitUnavailable {
			// A gateway's engine is electing a leader: wait a moment.
			// (The put may have stored some tasks. Under a request ID,
			// putting them again adds nothing; without, they run twice
			// and the results of the first are not printed.)
			unanswered = true
			p.conn.putUnavailable(err, start)
			pause(ctx, unavailablePause)
			continue
		}
		if err == nil || errors.Is(err, wire.ErrQueueFull) {
			p.conn.putAnswered()
		}
		if err == nil && sends == 1 {
			// Sent once, a repeat is an earlier put's item (sent again,
			// it may be this put's own first send).
			p.repeats += repeats
		}
		if !errors.Is(err, wire.ErrQueueFull) || ctx.Err() != nil {
			return ids, err
		}
		if len(items) > 1 && len(opts.Keys) == 0 && (!unanswered || rid == "" || neverFits(ctx, p.conn, p.queue, len(items))) {
			half := len(items) / 2
			var firstID, restID string
			if rid != "" {
				firstID, restID = rid+"a", rid+"b"
			}
			first, err := p.putWaiting(ctx, items[:half], firstID)
			if err != nil {
				return first, err
			}
			rest, err := p.putWaiting(ctx, items[half:], restID)
			return append(first, rest...), err
		}
		if !p.until.IsZero() && !time.Now().Before(p.until) {
			return nil, err
		}
	}
}

// neverFits reports whether a put of n tasks is longer than queue's max
// length, so that the queue refused it at once and stored none of it. If
// the length cannot be read (a key that may not inspect), it says so too:
// splitting risks a batch stored twice, where waiting for a batch that
// never fits would wait for ever.
func neverFits(ctx context.Context, conn *producerConn, queue string, n int) bool {
	var stats []wire.QueueStats
	err := conn.call(ctx, func(c *wire.Client) (err error) {
		stats, err = c.Stats(ctx, queue)
		return err
	})
	return err != nil || len(stats) != 1 || stats[0].MaxLen > 0 && n > stats[0].MaxLen
}

// collect gets results and hands them over in batches until finish is
// closed (checked between gets) or ctx ends. An item that is not a result
// is handed over too, to be put back.
func collect(ctx context.Context, finish <-chan struct{}, conn *producerConn, queue string, out chan<- []received) error {
	c, gen := conn.client()
	for {
		select {
		case <-finish:
			return nil
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, resultWait+callSlack)
		start := time.Now()
		// Given other gateways to go on through, map takes results under
		// a lease and acks them once it has them: an answer lost with its
		// connection would lose results taken for good, whereas leased
		// ones come back (and any that were received twice are ignored).
		tasks, err := c.Get(cctx, queue, wire.GetOptions{Max: resultBatch, Timeout: resultWait, NoAck: !conn.reconnect, Lease: resultLease})
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if conn.goElsewhere(err) {
			// Go on through another gateway: the results wait in the
			// cluster (see producerConn).
			if c, gen, err = conn.replace(ctx, gen, err); err != nil {
				return fmt.Errorf("get results from %s: %w", queue, err)
			}
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) {
			// The master did not answer a get that it should have
			// answered, empty, after resultWait: most likely the network
			// between us is down (or the master is stuck).
			return fmt.Errorf("get results from %s: no answer from the master in %s (is it reachable?): %w",
				queue, resultWait+callSlack, err)
		}
		if errors.Is(err, wire.ErrUnavailable) {
			conn.getUnavailable(err, start)
			pause(ctx, unavailablePause) // a gateway's engine is electing a leader
			continue
		}
		if err != nil {
			return fmt.Errorf("get results from %s: %w", queue, err)
		}
		if len(tasks) == 0 {
			continue
		}
		conn.resultsGot()
		if conn.reconnect {
			// Acked as soon as they are here, so that their lease need
			// not outlast a slow reader of map's output.
			ids := make([]uint64, len(tasks))
			for i, t := range tasks {
				ids[i] = t.ID
			}
			cctx, cancel := context.WithTimeout(ctx, resultWait+callSlack)
			err := c.Ack(cctx, queue, ids...)
			cancel()
			// Results whose ack is lost come again and are ignored; only
			// a lost connection needs seeing to here, the next get
			// reports anything else.
			if conn.goElsewhere(err) {
				if c, gen, err = conn.replace(ctx, gen, err); err != nil {
					return fmt.Errorf("get results from %s: %w", queue, err)
				}
			}
		}
		rs := make([]received, len(tasks))
		for i := range tasks {
			r, err := wire.DecodeResult(tasks[i].Payload)
			rs[i] = received{Result: r, item: &tasks[i], ok: err == nil}
		}
		// Taken, they are handed over even after finish: mapRun takes
		// them until the collector ends.
		select {
		case out <- rs:
		case <-ctx.Done():
			return nil
		}
	}
}

// waitCheckEvery is how often a map that waits for results, none coming,
// looks into its tasks queue (tasksWatch).
const waitCheckEvery = 5 * time.Second

// giveBackEvery is how often a map that has had no result of its own
// since puts back the items of its --results queue that are not its own,
// at first and at most.
const (
	giveBackEvery  = 500 * time.Millisecond
	giveBackAtMost = 8 * time.Second
)

// tasksWatch looks into the tasks queue of a map that waits for results in
// vain: if the queue is gone, with its tasks, map fails; if its tasks sit
// untaken, it says why, once.
type tasksWatch struct {
	conn      *producerConn
	queue     string
	results   string          // the queue the results come to
	told      map[string]bool // the kinds of note said
	off       bool            // the key may not read the queue's figures
	noClients bool            // the key may not list the clients
	goneWith  int             // results due at the last look, if it found the queue gone
}

// check is mapState.check.
func (w *tasksWatch) check(ctx context.Context, submitted, outstanding int) (string, error) {
	if w.off {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, gen := w.conn.client()
	stats, err := c.Stats(ctx, w.queue)
	gone := errors.Is(err, wire.ErrUnknownQueue)
	if err == nil && len(stats) == 1 && !stats[0].Unread && gen == 0 {
		// Made anew since (by a worker's get, say), the queue counts its
		// puts afresh and cannot hold the tasks outstanding. (Through
		// another connection, the master may be one restarted with its
		// queues, counting anew.)
		s := stats[0]
		gone = s.Puts < uint64(submitted) && s.Ready+s.Leased+s.Delayed < outstanding
	}
	// Gone on two looks in a row, no result between them: one look may
	// catch a cluster electing the stream's leader, whose members answer
	// with their own state, which may be behind.
	was := w.goneWith == outstanding
	w.goneWith = 0
	if gone {
		w.goneWith = outstanding
	}
	gone = gone && was
	if gone {
		return "", fmt.Errorf("tasks queue %s was deleted; %d %s of this map went with it",
			w.queue, outstanding, plural(outstanding, "task", "tasks"))
	}
	w.off = errors.Is(err, wire.ErrPermissionDenied)
	if err != nil || len(stats) != 1 {
		return "", nil
	}
	s := stats[0]
	if s.Ready+s.Leased+s.Delayed == 0 {
		// Results handed out and not acked: taken through a connection
		// lost with its gateway (a single master requeues a lost
		// connection's at once), or by another client of a shared
		// --results queue; they come back when their leases run out.
		rs, err := c.Stats(ctx, w.results)
		if err == nil && len(rs) == 1 && rs[0].Ready > 0 {
			return "", nil // done, their results on the way to map (after a reconnection, say)
		}
		if err == nil && len(rs) == 1 && rs[0].Leased > 0 {
			n := rs[0].Leased
			return w.once("results held", fmt.Sprintf("waiting: %d %s due; %s holds none of its tasks, and %d %s in %s, taken and not acknowledged by another connection (one lost with its gateway, or another client of the queue): %s",
				outstanding, plural(outstanding, "result", "results"), w.queue, n, plural(n, "result waits", "results wait"),
				w.results, plural(n, "it comes back when its lease runs out", "they come back when their leases run out"))), nil
		}
		// A task that fails for good sends its error result: tasks that
		// vanish without one were purged or dropped. A note, not a
		// failure: the figures of a cluster's gateway may lag.
		return w.once("gone", fmt.Sprintf("waiting: %d %s due, and %s holds no task, ready, running or delayed (purged, or dropped?); map waits until --timeout",
			outstanding, plural(outstanding, "result", "results"), w.queue)), nil
	}
	if s.Ready == 0 {
		return "", nil // none is ready
	}
	ready := fmt.Sprintf("waiting: %d %s ready in %s", s.Ready, plural(s.Ready, "task", "tasks"), w.queue)
	if s.Paused { // workers may wait on it, in vain
		return w.once("paused", fmt.Sprintf("%s, which is paused (qmaster resume %s)", ready, w.queue)), nil
	}
	if s.Leased > 0 || s.Consumers > 0 {
		return "", nil // tasks are taken
	}
	workers := -1
	if !w.noClients && c.MayAdminister() {
		clients, err := c.Clients(ctx)
		w.noClients = errors.Is(err, wire.ErrPermissionDenied)
		if err == nil {
			workers = 0
			for _, ci := range clients {
				if ci.Role == "worker" {
					workers++
				}
			}
		}
	}
	switch {
	case workers == 0:
		return w.once("no worker", ready+" and no worker connected"), nil
	case workers > 0:
		return w.once("none taken", fmt.Sprintf("%s and none taken (%d %s connected, none getting from %s)",
			ready, workers, plural(workers, "worker", "workers"), w.queue)), nil
	}
	return w.once("none taken", fmt.Sprintf("%s and none taken (is a worker serving %s?)", ready, w.queue)), nil
}

// once returns note the first time it is given kind, then "".
func (w *tasksWatch) once(kind, note string) string {
	if w.told[kind] {
		return ""
	}
	w.told[kind] = true
	return note
}

// putBackFor bounds how long map puts back the items of its --results
// queue that are not its own.
const putBackFor = 10 * time.Second

// putBack puts items taken from queue that this map did not submit back,
// in the order they were taken (by their IDs), with their reply queue and
// priority, and says so on errOut, or, if quiet, only if some could not
// be. round tells each call's puts apart (their request IDs).
func putBack(ctx context.Context, conn *producerConn, queue string, items []*wire.Task, errOut io.Writer, round int, quiet bool) {
	slices.SortFunc(items, func(a, b *wire.Task) int { return cmp.Compare(a.ID, b.ID) })
	// The run's ctx may be over; the items deserve time of their own.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), putBackFor)
	defer cancel()
	all, put := len(items), 0
	var err error
	for len(items) > 0 && err == nil {
		n := 1 // a run of items with the same options is one put
		for n < len(items) && items[n].ReplyTo == items[0].ReplyTo && items[n].Priority == items[0].Priority {
			n++
		}
		raw := make([]msgpack.RawMessage, n)
		for i, t := range items[:n] {
			raw[i] = t.Payload
			if len(raw[i]) == 0 {
				raw[i] = msgpackNil // as a get hands out nil
			}
		}
		p := &putter{conn: conn, queue: queue, opts: wire.PutOptions{ReplyTo: items[0].ReplyTo, Priority: items[0].Priority}, waitUnavailable: true}
		var ids []uint64
		ids, err = p.putWaiting(ctx, raw, fmt.Sprintf("%sback-%d-%d", conn.idPrefix, round, put))
		put += len(ids)
		items = items[n:]
	}
	if err != nil {
		fmt.Fprintf(errOut, "qmaster map: put back %d of %d items of %s that this map did not submit; the other %d are lost: %v\n",
			put, all, queue, all-put, err)
		return
	}
	if !quiet {
		fmt.Fprintf(errOut, "qmaster map: put back %d %s of %s that this map did not submit\n", all, plural(all, "item", "items"), queue)
	}
}

// msgpackNil is the msgpack encoding of nil.
var msgpackNil = msgpack.RawMessage(msgp.AppendNil(nil))

func newMapBar(w io.Writer, max int) *progressbar.ProgressBar {
	return progressbar.NewOptions(max,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("map"),
		progressbar.OptionShowCount(),
		progressbar.OptionSetItsString("tasks"),
		progressbar.OptionShowIts(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		// No spinner: it would start a ticker goroutine the bar never stops.
		progressbar.OptionSetSpinnerChangeInterval(0),
	)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// shorten cuts s to about n characters for a message.
func shorten(s string, n int) string {
	s = strings.TrimSpace(s)
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}
