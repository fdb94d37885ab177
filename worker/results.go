package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/wire"
)

// maxBatch bounds the completions sent in one Complete call.
const maxBatch = 256

// completeTimeout bounds one Complete call; a master that takes longer is
// treated as gone for those tasks, whose leases then run out.
const completeTimeout = 30 * time.Second

// results is the result pipeline: it carries the handlers' outcomes to the
// master, and counts the tasks between their get and their complete.
//
// Who touches it:
//   - the handler goroutines add their outcomes to pending (add);
//   - the Run goroutine, in serve, takes them (take) and sends them, with
//     a get or on their own. It is the one goroutine that sends results:
//     it alone decides where each goes, and no outcome is taken by anyone
//     else. It makes a get itself when no handler is running;
//   - the getter and the completer, two goroutines that results owns
//     (newResults starts them, stop ends them), make the calls serve hands
//     them while handlers run, one at a time each, so that a get waiting
//     at the master holds up no result: the getter a get, the completer a
//     batch on its own. Each accounts for its batch (finish) before it
//     replies, on got or sent.
//
// mu guards pending and the tally (count, idleSince) and is held for no
// call. noChain belongs to whoever makes the get, serve or the getter:
// serve makes or hands one at a time.
type results struct {
	cfg *Config // read only
	log *slog.Logger
	// noChain is set once the master has shown it does not run chained
	// requests: completes and gets go separately.
	noChain bool
	// rtt holds the round trips of the last gets that returned tasks, for
	// the prefetch (see runner.prefetch). Like noChain, it belongs to
	// whoever makes the get; serve reads it between gets.
	rtt rttWindow

	gets      chan getCall  // to the getter; closed by stop
	got       chan gotReply // buffered 1: from the getter
	completes chan sendCall // to the completer; closed by stop
	sent      chan struct{} // buffered 1: from the completer
	wg        sync.WaitGroup
	// changed is signalled whenever a handler returns, or drops its result,
	// so that the Run goroutine can take more tasks, send results, or
	// notice it is idle or done.
	changed chan struct{}

	mu        sync.Mutex
	count     tally
	idleSince time.Time // when count.inflight last became 0
	// pending holds handlers' outcomes until serve takes them. All are of
	// the session serve is on: a handler whose session has ended drops its
	// outcome itself (add).
	pending []finished
	// again holds batches whose completion was cut off with its
	// connection, to be sent through the next as they were: the old
	// gateway may have stored their results, and the next one stores
	// them once only if it packs them alike (keepForNext).
	again [][]finished
	// hasAgain is set while again holds batches, so that serve need not
	// take mu each round to find none.
	hasAgain atomic.Bool
	// progress is when a handler last started or returned (UnixNano):
	// serve gives back the tasks waiting to start when it stands still
	// too long (runner.overstayIn).
	progress atomic.Int64
}

// tally counts tasks between their get and their complete.
type tally struct {
	inflight int // taken and not yet completed or dropped
	running  int // whose handler has not returned yet
	handled  int // completed, failed ones included
	// took is a moving average of how long handlers run; 0 until the
	// first returns.
	took time.Duration
}

// finished is one handler's outcome, to be sent on its session.
type finished struct {
	s *session
	l *lease
	c wire.Completion
}

// getCall is a get, made by serve or handed to the getter; fs go with it.
type getCall struct {
	ctx  context.Context
	s    *session
	fs   []finished
	opts wire.GetOptions
}

// gotReply is the outcome of a getCall.
type gotReply struct {
	tasks []Task
	err   error
}

// sendCall is a batch of outcomes that serve hands the completer, or
// batches to send again, each as it was (results.again).
type sendCall struct {
	s     *session
	fs    []finished
	again [][]finished
}

func newResults(cfg *Config, log *slog.Logger) *results {
	res := &results{
		cfg:       cfg,
		log:       log,
		gets:      make(chan getCall),
		got:       make(chan gotReply, 1),
		completes: make(chan sendCall),
		sent:      make(chan struct{}, 1),
		changed:   make(chan struct{}, 1),
		idleSince: time.Now(),
	}
	res.wg.Add(2)
	go res.getter()
	go res.completer()
	return res
}

// stop ends the getter and the completer. Nothing must be in flight.
func (res *results) stop() {
	close(res.gets)
	close(res.completes)
	res.wg.Wait()
}

// taken counts n tasks just taken, before they run or wait to.
func (res *results) taken(n int) {
	res.mu.Lock()
	res.count.inflight += n
	res.mu.Unlock()
}

// started counts n taken tasks whose handlers are about to run.
func (res *results) started(n int) {
	res.mu.Lock()
	res.count.running += n
	res.mu.Unlock()
}

// add queues a handler's outcome for serve, or drops it if its session
// has ended (unless its lease is handed over to the next: see
// lease.handover): serve is done with that session, and no one else sends
// results. The check and the queueing are under mu, which lose takes after
// it cancels the session, so that no outcome is left behind. took is how
// long the handler ran.
func (res *results) add(f finished, took time.Duration) {
	res.mu.Lock()
	res.count.running--
	res.count.took = ewma(res.count.took, took)
	if f.s.ctx.Err() != nil && !f.l.handover {
		res.mu.Unlock()
		res.drop(f.s, []finished{f})
	} else {
		res.pending = append(res.pending, f)
		res.mu.Unlock()
	}
	res.signal()
}

// stalled counts a time d during which no handler started or returned
// while tasks waited, as a handler time at least that long: the mean
// rises to d at once, rather than by an eighth of it.
func (res *results) stalled(d time.Duration) {
	res.mu.Lock()
	res.count.took = max(res.count.took, d)
	res.mu.Unlock()
}

// putBack returns outcomes taken from pending, to be sent through the
// next session.
func (res *results) putBack(fs []finished) {
	if len(fs) == 0 {
		return
	}
	res.mu.Lock()
	res.pending = append(res.pending, fs...)
	res.mu.Unlock()
}

// take appends the pending outcomes to held, and returns them with the
// tally. Only the Run goroutine takes outcomes.
func (res *results) take(held []finished) ([]finished, tally) {
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(held) == 0 {
		// The next batch is likely as large: one allocation of its size
		// rather than growing from nothing by doubling.
		held, res.pending = res.pending, make([]finished, 0, cap(res.pending))
	} else {
		held = append(held, res.pending...)
		clear(res.pending)
		res.pending = res.pending[:0]
	}
	return held, res.count
}

// counts returns the tally.
func (res *results) counts() tally {
	res.mu.Lock()
	defer res.mu.Unlock()
	return res.count
}

// idleLeft reports how long until IdleExit ends the worker; idle is false
// while tasks are in flight.
func (res *results) idleLeft() (left time.Duration, idle bool) {
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.count.inflight > 0 {
		return 0, false
	}
	return time.Until(res.idleSince.Add(res.cfg.IdleExit)), true
}

// signal wakes the Run goroutine to look at the counts again.
func (res *results) signal() {
	select {
	case res.changed <- struct{}{}:
	default:
	}
}

// finish accounts for n tasks that are no longer in flight, of which
// handled were completed; at is when their results were sent, from which
// the worker counts as idle if nothing else is in flight.
func (res *results) finish(n, handled int, at time.Time) {
	res.mu.Lock()
	res.count.inflight -= n
	res.count.handled += handled
	if res.count.inflight == 0 {
		res.idleSince = at
	}
	res.mu.Unlock()
}

// dropUnrun forgets a task of s that was counted as running but never
// ran: it waited in the handler pool while its lease was lost.
func (res *results) dropUnrun(s *session, l *lease) {
	res.mu.Lock()
	res.count.running--
	res.mu.Unlock()
	res.drop(s, []finished{{s: s, l: l}})
	res.signal()
}

// drop forgets the results fs of s, which cannot be sent: their
// connection is gone, or their leases.
func (res *results) drop(s *session, fs []finished) {
	if len(fs) > 0 {
		s.untrack(fs)
		res.finish(len(fs), 0, time.Now())
	}
}

// getter makes the gets serve hands it, with the results that go with
// them, until stop.
func (res *results) getter() {
	defer res.wg.Done()
	for c := range res.gets {
		res.got <- res.get(c)
	}
}

// get makes the get c, on the getter, or on the Run goroutine when no
// handler is running.
func (res *results) get(c getCall) gotReply {
	tasks, err := res.completeThenGet(c.ctx, c.s, c.fs, c.opts)
	return gotReply{tasks: tasks, err: err}
}

// completer sends the batches of results serve hands it, on their own,
// until stop.
func (res *results) completer() {
	defer res.wg.Done()
	for c := range res.completes {
		for _, fs := range c.again {
			res.send(c.s, fs, true)
		}
		res.send(c.s, c.fs, false)
		res.sent <- struct{}{}
	}
}

// send completes fs on s, at most maxBatch per call, or drops them if s
// has lost its connection, and accounts for them. It runs on the
// completer, or where a get is made for results that cannot go with it.
// again says fs were sent before, their call cut off: one the master took
// then comes back as not leased, which is no news.
func (res *results) send(s *session, fs []finished, again bool) {
	for len(fs) > 0 {
		k := min(len(fs), maxBatch)
		sent := time.Now()
		held, until := s.completing(fs[:k])
		handled := res.completeHeld(s, held, until, again)
		batch := fs[:k]
		if handled == 0 && s.gone() {
			batch = res.keepForNext(batch, true)
		}
		s.untrack(batch)
		res.finish(len(batch), handled, sent)
		fs = fs[k:]
	}
}

// keepForNext keeps the outcomes of fs whose leases go over to the next
// session (lease.handover), since the connection of their session is
// gone, and returns the others, in fs's array. If fs was sent (its call
// cut off), they are kept as a batch, to be sent again as it was; else
// they go back to pending. Sent again, one the old gateway acked is
// refused as not leased; one it stored and did not ack is stored once
// more by the next gateway, which JetStream keeps once if both packed
// the batch alike. (Dropping them instead would hold their tasks for the
// ack wait, 30s by default, whenever a gateway dies with completions on
// the way.)
func (res *results) keepForNext(fs []finished, sent bool) []finished {
	rest := fs[:0]
	var kept []finished
	for _, f := range fs {
		if f.l.handover {
			kept = append(kept, f)
		} else {
			rest = append(rest, f)
		}
	}
	if !sent {
		res.putBack(kept)
	} else if len(kept) > 0 {
		res.mu.Lock()
		res.again = append(res.again, kept)
		res.hasAgain.Store(true)
		res.mu.Unlock()
	}
	return rest
}

// takeAgain returns the batches to send again as they were.
func (res *results) takeAgain() [][]finished {
	if !res.hasAgain.Load() {
		return nil
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	again := res.again
	res.again = nil
	res.hasAgain.Store(false)
	return again
}

// completeHeld sends the completions held, whose leases s holds until
// until, and returns how many the master took. again says they may have
// been taken already, by a chained call whose reply never came.
func (res *results) completeHeld(s *session, held []wire.Completion, until time.Time, again bool) (handled int) {
	if len(held) == 0 {
		return 0
	}
	if s.gone() {
		res.log.Debug("connection lost; results dropped", "queue", res.cfg.Tasks, "tasks", len(held))
		return 0
	}
	err := res.complete(s, held)
	if errors.Is(err, wire.ErrUnavailable) {
		err = res.completeWhileUnavailable(s, held, until, err)
		again = true
	}
	return res.completed(s, held, err, again)
}

func (res *results) complete(s *session, held []wire.Completion) error {
	ctx, cancel := context.WithTimeout(s.ctx, completeTimeout)
	defer cancel()
	return s.c.Complete(ctx, res.cfg.Tasks, res.cfg.Results, held)
}

// Pauses between the sends of a completion answered "unavailable".
const (
	firstUnavailablePause = 250 * time.Millisecond
	maxUnavailablePause   = 2 * time.Second
)

// completeWhileUnavailable sends the results of held again, whose
// completion was answered err, "unavailable" (a cluster's gateway whose
// queues' engine is electing a leader or out of its reach), until the
// first of their leases would run out, as they stood before the first
// send (until), and returns the last answer. Dropped, they would wait out
// their leases and run again. A completion sent again counts once: the
// master refuses a task it took already as not leased, and a gateway
// stores its results under the IDs it stored them by before (see
// keepForNext). Failed attempts are not sent again: the master takes
// them first, and one sent again could fail the task's next delivery.
func (res *results) completeWhileUnavailable(s *session, held []wire.Completion, until time.Time, err error) error {
	var results []wire.Completion
	for _, c := range held {
		if c.Error == "" {
			results = append(results, c)
		}
	}
	if len(results) == 0 {
		return err
	}
	pause := firstUnavailablePause
	for errors.Is(err, wire.ErrUnavailable) && time.Until(until) > pause {
		if pause == firstUnavailablePause {
			res.log.Warn("complete answered unavailable; sending it again while the leases last",
				"queue", res.cfg.Tasks, "tasks", len(results), "err", err)
		}
		t := time.NewTimer(pause)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return err
		case <-s.c.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, maxUnavailablePause)
		err = res.complete(s, results)
	}
	return err
}

// completed interprets the outcome err of completing held and returns how
// many tasks the master took.
func (res *results) completed(s *session, held []wire.Completion, err error, again bool) (handled int) {
	switch {
	case err == nil:
		return len(held)
	case s.gone() || errors.Is(err, wire.ErrClosed):
		res.log.Debug("connection lost; results dropped", "queue", res.cfg.Tasks, "tasks", len(held), "err", err)
	case errors.Is(err, wire.ErrNotLeased):
		// The others in the batch were completed.
		if !again {
			res.log.Warn("lease lost before completion: the master handed the task out again (to this worker or another), and that delivery's result counts",
				"queue", res.cfg.Tasks, "err", err)
		}
		return len(held)
	case errors.Is(err, context.DeadlineExceeded):
		// A cluster's gateway that cannot store the results yet holds
		// them and keeps their leases, and may store them after this.
		res.log.Warn("complete not answered in time; the master may still store the results, else the tasks are redelivered when their leases run out",
			"queue", res.cfg.Tasks, "tasks", len(held), "timeout", completeTimeout)
	case errors.Is(err, wire.ErrUnknownQueue):
		res.log.Warn("complete failed: the tasks' queue is gone (deleted?); their results are dropped",
			"queue", res.cfg.Tasks, "tasks", len(held), "err", err)
	case errors.Is(err, wire.ErrPermissionDenied):
		// Refused whole (the key may not take from the queue), the tasks
		// run again once their leases run out; refused results only, the
		// tasks are done: the master's error says which.
		res.log.Warn("complete refused by the master's access rules", "queue", res.cfg.Tasks, "tasks", len(held), "err", err)
	default:
		res.log.Warn("complete failed; the tasks will be redelivered when their leases run out",
			"queue", res.cfg.Tasks, "tasks", len(held), "err", err)
	}
	return 0
}

// completeThenGet sends the outcomes fs (all of session s) and takes up
// to opts.Max tasks, in one round trip when there are outcomes to send.
// It runs where the get is made (see get), and accounts for fs before it
// returns.
func (res *results) completeThenGet(ctx context.Context, s *session, fs []finished, opts wire.GetOptions) ([]Task, error) {
	if len(fs) > maxBatch || res.noChain {
		res.send(s, fs, false)
		fs = nil
	}
	held, until := s.completing(fs)
	if len(held) == 0 || s.gone() {
		if s.gone() {
			fs = res.keepForNext(fs, false)
		}
		res.drop(s, fs)
		start := time.Now()
		tasks, err := s.c.Get(ctx, res.cfg.Tasks, opts)
		res.measure(start, len(tasks))
		return tasks, err
	}
	sent := time.Now()
	tasks, completeErr, err := s.c.CompleteThenGet(ctx, res.cfg.Tasks, res.cfg.Results, held, opts)
	res.measure(sent, len(tasks))
	handled := len(held)
	switch {
	case errors.Is(completeErr, wire.ErrUnavailable):
		handled = res.completed(s, held, res.completeWhileUnavailable(s, held, until, completeErr), true)
	case completeErr != nil:
		handled = res.completed(s, held, completeErr, false)
	case errors.Is(err, wire.ErrChainIgnored):
		res.noChain = true
		res.log.Info("the master does not take a complete and a get in one call; sending them apart")
		err = nil
	case err != nil && ctx.Err() != nil:
		// Cancelled (a drain) before the reply: the master may or may not
		// have the results. Send them again on their own; those it took
		// already come back as not leased, and no result is published twice.
		handled = res.completeHeld(s, held, until, true)
		err = ctx.Err()
	case err != nil && (s.gone() || errors.Is(err, wire.ErrClosed)):
		handled = 0
	}
	if handled == 0 && s.gone() {
		fs = res.keepForNext(fs, true)
	}
	s.untrack(fs)
	res.finish(len(fs), handled, sent)
	return tasks, err
}

// measure records the round trip of a get made at start that returned n
// tasks. One that returned none waited at the master, and says nothing of
// the round trip.
func (res *results) measure(start time.Time, n int) {
	if n > 0 {
		res.rtt.add(time.Since(start))
	}
}

// rttWindow keeps the round trips of the last gets that returned tasks.
// A get that returned tasks may still have waited at the master for them,
// when the queue was empty; the least of the last few is the round trip
// itself, as soon as one of them found tasks waiting, which is when a
// prefetch matters.
type rttWindow struct {
	d [8]time.Duration
	n int // samples taken, of which the last len(d) are kept
}

func (w *rttWindow) add(d time.Duration) {
	w.d[w.n%len(w.d)] = d
	w.n++
}

// min returns the least round trip kept, or 0 until there are two: the
// first get of a worker often waits for the first tasks.
func (w *rttWindow) min() time.Duration {
	if w.n < 2 {
		return 0
	}
	m := w.d[0]
	for _, d := range w.d[1:min(w.n, len(w.d))] {
		m = min(m, d)
	}
	return m
}

// ewma adds the sample d to the moving average avg (0 if none yet), with
// a weight of 1/8.
func ewma(avg, d time.Duration) time.Duration {
	if avg == 0 {
		return max(d, 1)
	}
	return avg + (d-avg)/8
}
