package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/wire"
)

// Run takes tasks from cfg.Tasks and runs cfg.Handler on each, at most
// cfg.Concurrency at a time, until one of:
//
//   - ctx is cancelled: Run drains (takes no new task, gives back the
//     tasks it took and has not started, lets the running handlers
//     finish, completes them all) and returns nil;
//   - the worker has had no task for cfg.IdleExit, or has handled
//     cfg.MaxTasks: Run returns nil;
//   - an error that retrying cannot fix, such as a wrong authkey (it wraps
//     auth.ErrAuthFailed), a key that may not get from the queue
//     (wire.ErrPermissionDenied) or a bad queue name.
//
// Run reconnects, with exponential backoff and jitter, whenever it cannot
// reach the master or the connection drops. The results of tasks still
// running when a connection to a single master drops are discarded, since
// the master has requeued those tasks; their handlers' ctx is cancelled
// with cause ErrLeaseLost. Tasks handed out by a gateway of a cluster
// (they carry a Token) are not: their handlers run on, and their results
// go through the next connection, to whichever gateway it reaches, which
// takes them while the delivery is still the task's current one. Every
// goroutine Run starts has ended when it returns.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.setDefaults()
	r := newRunner(ctx, cfg)
	err := r.run(ctx)
	r.stop()
	if err == nil { // an error is the caller's to report
		r.log.Info("worker stopped", "handled", r.res.counts().handled)
	}
	return err
}

// errConnLost is why a session ended when its connection dropped while
// no call was in progress to report the error.
var errConnLost = errors.New("connection dropped")

// errStop tells run that the worker should stop cleanly: ctx was
// cancelled, or IdleExit passed while it waited.
var errStop = errors.New("stop")

// runner is one Run: the reconnect loop and the worker's lifecycle. The
// goroutine that called Run drives it and owns its fields (those of pool
// and res excepted): it connects, serves each session (takes tasks, and
// decides where each result goes), drains and stops. The pool runs the
// handlers, the result pipeline (results) carries their outcomes back,
// and each session's keeper renews its leases; stop and session.close
// join their goroutines.
//
// Results go with the Run goroutine's next get, in one round trip
// (wire.Client.CompleteThenGet), when it is about to make one; while a get
// waits at the master, they go at once on their own.
//
// A task taken here that is not completed here leaves by one of these:
// release gives back tasks not started (draining, stalled, slow) for
// other workers; giveBack, at a drain past DrainTimeout, cancels the
// handlers still running (session.giveUp) and gives their tasks back;
// dropWaiting forgets the waiting tasks of a lost connection, which the
// master requeues itself; results.dropUnrun and results.drop forget a
// task, or results, whose lease or connection is gone.
type runner struct {
	cfg     Config
	log     *slog.Logger
	base    context.Context // Run's ctx without its cancellation: handlers outlive the drain
	bo      backoff
	pool    *pool    // runs the handlers
	res     *results // takes their outcomes to the master
	started []job    // start's scratch
	// waiting holds the tasks taken beyond the free slots (the prefetch),
	// leased and counted in flight, until a slot frees. They are all of
	// the session serve is on. waiting[whead:] wait.
	waiting []job
	whead   int
	// handedOver are the leases of a lost session whose tasks another
	// gateway can complete (lease.handover), for the next session.
	handedOver []*lease
	// noRelease is set once the master refused a release (one older than
	// it): tasks not started then wait here, as they did before.
	noRelease bool
	// overstay wakes serve when the tasks waiting to start have waited
	// too long (overstayIn); its channel is nil while it is not set.
	overstay   *time.Timer
	overstayAt time.Time
}

func newRunner(ctx context.Context, cfg Config) *runner {
	r := &runner{
		cfg:  cfg,
		log:  cfg.Logger.With("worker", cfg.Name),
		base: context.WithoutCancel(ctx),
		bo:   backoff{min: cfg.ReconnectMin, max: cfg.ReconnectMax},
	}
	// At Concurrency 1 the pool takes the prefetched tasks too (see
	// runWaiting), and runs them one at a time.
	r.pool = newPool(r.runTask, r.cfg.Concurrency)
	r.res = newResults(&r.cfg, r.log)
	return r
}

// stop waits for every handler goroutine, and then ends the result
// pipeline's goroutines. By then no result is left to send: serve returned
// with none in flight, or dropped them with its session, and the handlers
// of ended sessions dropped their own.
func (r *runner) stop() {
	r.pool.stop()
	r.res.stop()
}

// run connects and serves sessions until the worker should stop.
func (r *runner) run(ctx context.Context) error {
	afterLoss := false
	for {
		c, err := r.connect(ctx, afterLoss)
		if errors.Is(err, errStop) {
			r.drain(ctx)
			return nil
		}
		if err != nil {
			r.endHandedOver()
			return err
		}
		s := r.newSession(c, r.handedOver)
		if len(r.handedOver) > 0 {
			r.log.Info("completing the tasks of the lost connection through this one", "tasks", len(r.handedOver))
			r.handedOver = nil
		}
		r.log.Info("connected to master", "server", r.cfg.Server, "queue", r.cfg.Tasks, "slots", r.slots())
		stop, err := r.serve(ctx, s)
		s.close()
		if stop {
			return err
		}
		afterLoss = true
	}
}

// connect dials the master until it answers, backing off between
// attempts. It returns errStop if the worker should stop meanwhile, and at
// once an error that retrying cannot fix.
func (r *runner) connect(ctx context.Context, afterLoss bool) (*wire.Client, error) {
	var delay time.Duration
	if afterLoss {
		delay = r.bo.next()
	}
	var last error
	for attempt := 1; ; attempt++ {
		if delay > 0 && r.pause(ctx, delay) {
			if !afterLoss && ctx.Err() == nil {
				// IdleExit passed before the master was ever reached:
				// not an idle worker's clean end, but a failure to start.
				return nil, fmt.Errorf("master not reached within the idle exit time (%v): %w", r.cfg.IdleExit, last)
			}
			return nil, errStop
		}
		if ctx.Err() != nil {
			return nil, errStop
		}
		c, err := wire.Dial(ctx, wire.Config{
			Addr:    r.cfg.Server,
			Authkey: r.cfg.Authkey,
			Role:    "worker",
			Name:    r.cfg.Name,
			TLS:     r.cfg.TLS,
		})
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, errStop
		}
		if permanent(err) {
			return nil, err
		}
		last = err
		delay = r.bo.next()
		r.log.Warn("cannot connect to master; retrying", "server", r.cfg.Server, "attempt", attempt,
			"retry_in", delay.Round(time.Millisecond), "err", err)
	}
}

// permanent reports whether a dial error is one that retrying cannot fix:
// a wrong key, a master's certificate this worker does not trust, or a
// protocol mismatch.
func permanent(err error) bool {
	var cve *tls.CertificateVerificationError
	return errors.Is(err, auth.ErrAuthFailed) ||
		errors.As(err, &cve) ||
		errors.Is(err, auth.ErrBadHandshake) ||
		errors.Is(err, wire.ErrBadPreamble) ||
		errors.Is(err, wire.ErrUnsupportedVersion)
}

// serve takes tasks on s until the worker should stop (stop is true, and
// err says why if it is an error) or the connection is lost (stop is
// false, see lose). Before it returns to stop, it drains.
//
// It is the one place results are sent from. An outcome taken from pending
// goes with the next get if serve is about to make one; otherwise (every
// slot is busy, a get is waiting at the master, or it drains) it goes on
// its own, through the completer, at once unless the completer is busy
// with a batch: then it goes with the next batch or get.
//
// serve makes a get itself when no handler is running (always at
// Concurrency 1), since no result can come while the get waits at the
// master. While handlers run it hands the get to the getter instead, and
// stays free to send their results.
func (r *runner) serve(ctx context.Context, s *session) (stop bool, err error) {
	r.noRelease = false // this master may know the call
	var (
		held       []finished // taken from pending, not yet handed on
		getting    bool       // the getter has a get of ours
		completing bool       // the completer has a batch of ours
		draining   bool       // no more gets: wait until nothing is in flight
		stopErr    error      // why serve stops once drained, if for an error
		drainEnd   *time.Timer
		drainOver  <-chan time.Time // fires Config.DrainTimeout into a drain
	)
	defer func() {
		if drainEnd != nil {
			drainEnd.Stop()
		}
	}()
	// quit returns, once nothing is in flight, after the completer's reply.
	quit := func(err error) (bool, error) {
		if completing {
			<-r.res.sent
		}
		return true, err
	}
	cancelled := ctx.Done()
	for {
		select { // take sees what changed so far: no need to wake for it
		case <-r.res.changed:
		default:
		}
		var t tally
		held, t = r.res.take(held)
		if ctx.Err() != nil && drainEnd == nil {
			switch {
			case givesBackNow(context.Cause(ctx)):
				drainEnd = time.NewTimer(0)
				drainOver = drainEnd.C
			case r.cfg.DrainTimeout > 0:
				drainEnd = time.NewTimer(r.cfg.DrainTimeout)
				drainOver = drainEnd.C
			}
		}
		slots := r.slots()
		if ctx.Err() != nil && !r.noRelease && !s.gone() && len(r.waiting) > r.whead {
			r.release(s, releaseDraining) // before any starts: see start
			t = r.res.counts()
		}
		t.running += r.runWaiting(s, slots-t.running)
		// Nothing goes to the completer on a session that is gone: results
		// kept for the next connection would come straight back, and serve
		// and the completer would pass them round (with a get at the
		// getter, until the getter's call fails); held ones stay held,
		// for lose to keep for the next session as they are.
		gone := s.gone()
		if !completing && !gone {
			if again := r.res.takeAgain(); again != nil {
				// Cut off with the last connection: each sent again alone,
				// as it was (keepForNext).
				r.res.completes <- sendCall{s: s, again: again}
				completing = true
			}
		}
		// Tasks taken here and not started go back to the master for
		// other workers: when draining; when the handlers are known to be
		// slow (no prefetch: tasks came beyond the free slots, on a get
		// sized before that was known); and when no handler has started
		// or ended for a while (the prefetch bet on quick tasks, and lost).
		// A get of ours that is out may be handed them straight back (it
		// waits at the master, where the queue may be empty for hours):
		// they then come back known slow, and go again, with no get out.
		var overstayC <-chan time.Time
		if !r.noRelease && !gone && (len(r.waiting) > r.whead || r.pool.beyondSlots() > 0) {
			now := time.Now()
			wait := r.overstayIn(now, t.took)
			why := ""
			switch {
			case draining || ctx.Err() != nil:
				why = releaseDraining
			case wait <= 0:
				why = releaseStalled
			case !getting && r.knownSlow(t):
				why = releaseSlow
			default:
				overstayC = r.armOverstay(now, wait)
			}
			if why != "" {
				r.release(s, why)
				t = r.res.counts() // fewer in flight now
			}
		}
		n := 0 // tasks to get now
		if !getting {
			switch {
			case draining || ctx.Err() != nil:
				if !draining && ctx.Err() != nil && t.inflight > 0 {
					r.log.Info("draining: taking no new tasks, waiting for running ones", "running", t.inflight)
				}
				draining = true
				if t.inflight == 0 {
					return quit(stopErr)
				}
			case r.cfg.MaxTasks > 0 && t.handled >= r.cfg.MaxTasks:
				r.log.Info("handled the maximum number of tasks; stopping", "max_tasks", r.cfg.MaxTasks)
				return quit(nil)
			default:
				// A slot is free once its handler returns, while its result
				// is still on the way to the master: the next get carries
				// it. Results waiting to be sent stay bounded by
				// Concurrency. Beyond the free slots, the worker takes up
				// to p tasks to wait in it.
				p := r.prefetch(t)
				n = min(slots+p-t.running-(len(r.waiting)-r.whead),
					2*slots+p-(t.inflight-len(held)))
				if r.cfg.MaxTasks > 0 {
					n = min(n, r.cfg.MaxTasks-t.handled-t.inflight)
				}
			}
		}
		var g gotReply // the reply to a get, once got is set
		got := false
		if n > 0 {
			timeout := r.cfg.GetTimeout
			if r.cfg.IdleExit > 0 {
				left, idle := r.res.idleLeft()
				if idle && left <= 0 {
					r.log.Info("idle; stopping", "idle_exit", r.cfg.IdleExit)
					return quit(nil)
				}
				if !idle {
					left = r.cfg.IdleExit
				}
				timeout = min(timeout, left)
			}
			c := getCall{ctx: ctx, s: s, fs: held, opts: wire.GetOptions{Max: n, Timeout: timeout, Lease: r.cfg.Lease}}
			held = nil
			if t.running == 0 {
				g, got = r.res.get(c), true
			} else {
				r.res.gets <- c
				getting = true
			}
		} else if len(held) > 0 && !completing && !gone {
			r.res.completes <- sendCall{s: s, fs: held}
			held, completing = nil, true
		}
		if !got {
			var lost, closed <-chan struct{}
			if !getting {
				// Draining too: results kept for the next connection
				// (lease.handover) would otherwise go round between
				// pending and the completer for ever, as none comes.
				// The connection's own end as well as the session's:
				// the keeper cancels the session once it sees the
				// connection closed, but serve and the completer passing
				// such results round kept the only thread busy, and the
				// keeper never ran (a qworker used a core for minutes).
				lost, closed = s.ctx.Done(), s.c.Done()
			}
			select {
			case <-r.res.changed:
				// Let the handlers that are ready to run finish first, so
				// that their results go in one message rather than one
				// each.
				runtime.Gosched()
			case <-r.res.sent:
				completing = false
			case g = <-r.res.got:
				getting, got = false, true
			case <-cancelled:
				cancelled = nil // the next round drains
			case <-overstayC:
				r.overstayAt = time.Time{} // fired: the next round looks
			case <-drainOver:
				drainOver = nil
				r.giveBack(s, givesBackNow(context.Cause(ctx)))
			case <-lost:
				return r.connectionLost(s, held, completing, draining, stopErr)
			case <-closed:
				return r.connectionLost(s, held, completing, draining, stopErr)
			}
			if !got {
				continue
			}
		}
		// A drain takes no new task: those of a get answered as it began
		// wait, and the next round gives them back (a master that cannot
		// take them back has them run).
		r.start(s, g.tasks, ctx.Err() == nil || r.noRelease)
		if len(g.tasks) > 0 {
			// Let the handlers just started run first: quick ones finish,
			// and their results go with the next get instead of one by one.
			runtime.Gosched()
		}
		switch err := g.err; {
		case err == nil:
			r.bo.reset() // the connection works
		case ctx.Err() != nil:
			// Draining; the next round says so.
		case errors.Is(err, wire.ErrBadRequest) || errors.Is(err, wire.ErrUnknownOp) || errors.Is(err, wire.ErrPermissionDenied):
			// No retry fixes these: a key that may not get from the
			// queue (or no longer may, after a reload) stops the worker
			// as a wrong authkey does.
			draining, stopErr = true, fmt.Errorf("get from queue %q: %w", r.cfg.Tasks, err)
			if t.inflight > 0 {
				r.log.Error("get refused; taking no new tasks, stopping once the running ones end", "err", err, "running", t.inflight)
			}
		default:
			return r.lose(s, held, completing, err)
		}
	}
}

// connectionLost ends serve when its session's connection is gone and no
// call is in progress to report it: as lose, but a worker draining to stop
// for an error stops, and what was kept for the next connection goes too.
func (r *runner) connectionLost(s *session, held []finished, completing, draining bool, stopErr error) (stop bool, _ error) {
	stop, err := r.lose(s, held, completing, errConnLost)
	if draining && stopErr != nil {
		r.endHandedOver()
		return true, stopErr
	}
	return stop, err
}

// lose ends serve when s has lost its connection (err says how): it
// cancels the session, which ends the completer's call on it at once,
// waits for the completer, and drops the results still held. From then on
// the handlers of s drop their own.
func (r *runner) lose(s *session, held []finished, completing bool, err error) (stop bool, _ error) {
	r.handedOver = append(r.handedOver, s.handOver()...)
	msg := "connection to master lost; reconnecting"
	if errors.Is(err, wire.ErrUnavailable) {
		// The connection is sound, but the gateway's cluster is out of
		// its reach (electing a leader, short of a majority, or this
		// gateway cut off): another gateway may reach it.
		msg = "the master's queues are unavailable; connecting again, through another gateway if several were given"
	}
	r.log.Warn(msg, "server", r.cfg.Server, "err", err, "dropped", s.count(), "kept", len(r.handedOver))
	s.cancel(ErrLeaseLost)
	if completing {
		<-r.res.sent
	}
	held, _ = r.res.take(held)
	var kept []finished
	for _, f := range held {
		if f.l.handover {
			kept = append(kept, f)
		} else {
			r.res.drop(f.s, []finished{f})
		}
	}
	r.res.putBack(kept)
	r.dropWaiting(false)
	return false, nil
}

// drain waits, between sessions, until no task is in flight: the handlers
// drop their results as they return, since their sessions have ended.
func (r *runner) drain(ctx context.Context) {
	// With no session to send them through, the results of handed-over
	// leases are dropped too, and their handlers told so.
	r.dropWaiting(true)
	r.endHandedOver()
	inflight := r.res.counts().inflight
	if inflight == 0 {
		return
	}
	if ctx.Err() != nil {
		r.log.Info("draining: taking no new tasks, waiting for running ones", "running", inflight)
	}
	for {
		for _, batch := range r.res.takeAgain() {
			r.res.drop(batch[0].s, batch)
		}
		held, t := r.res.take(nil)
		for _, f := range held {
			r.res.drop(f.s, []finished{f})
		}
		if t.inflight-len(held) == 0 {
			return
		}
		<-r.res.changed
	}
}

// slots is how many tasks may run at once now: Concurrency, or the
// handler's Capacity if it has one and it is less.
func (r *runner) slots() int {
	if r.cfg.Capacity == nil {
		return r.cfg.Concurrency
	}
	return max(1, min(r.cfg.Concurrency, r.cfg.Capacity()))
}

// prefetch is how many tasks the worker should take beyond its free
// slots, given the tally t: as many as its slots finish during one get's
// round trip, so that the next get's reply comes before they run out, and
// none while the handler time is unknown or longer than a round trip, so
// that no task waits here while another worker could run it.
func (r *runner) prefetch(t tally) int {
	if r.cfg.MaxPrefetch == 0 || t.took == 0 {
		return 0
	}
	rtt := r.res.rtt.min()
	if rtt == 0 {
		return 0
	}
	rtt = max(rtt, minRTT)
	return int(min(int64(r.slots())*int64(rtt)/int64(t.took), int64(r.cfg.MaxPrefetch)))
}

// minRTT is the least round trip the prefetch assumes, so that a quick
// master on loopback still gets batches worth their cost.
const minRTT = 50 * time.Microsecond

// start takes the tasks of a get: it leases them on s, and, if run, hands
// to the handler pool as many as there are free slots; the others wait.
func (r *runner) start(s *session, tasks []Task, run bool) {
	if len(tasks) == 0 {
		return
	}
	if r.whead > 0 { // drop the started ones first, so that the array stays bounded
		n := copy(r.waiting, r.waiting[r.whead:])
		clear(r.waiting[n:])
		r.waiting, r.whead = r.waiting[:n], 0
	}
	now := time.Now()
	r.res.progress.Store(now.UnixNano()) // new tasks wait from now (overstayIn)
	leases := s.track(tasks, now)
	for i, t := range tasks {
		r.waiting = append(r.waiting, job{s: s, l: &leases[i], t: t})
	}
	r.res.taken(len(tasks))
	if run {
		r.runWaiting(s, r.slots()-r.res.counts().running)
	}
}

// runWaiting hands up to free waiting tasks to the handler pool, in the order
// they came, and returns how many. At most Concurrency run: serve takes
// no more than there are free slots and the prefetch, and run fills only
// free slots. A waiting task whose lease was lost is dropped.
//
// At Concurrency 1 it hands every waiting task at once, whatever free
// is: the pool runs them one after another on its one goroutine (it runs
// at most Concurrency jobs at once), as handing each over when the one
// before returned would, but without waking the Run goroutine and a
// handler goroutine for every task, which was most of a default worker's
// cost per quick task. They count as running from then on; one whose lease
// is lost while it waits in the pool is dropped there (runTask).
func (r *runner) runWaiting(s *session, free int) int {
	if r.cfg.Concurrency == 1 {
		free = len(r.waiting) - r.whead
	}
	if free <= 0 || r.whead == len(r.waiting) {
		return 0
	}
	r.started = r.started[:0] // only the Run goroutine starts tasks
	for ; r.whead < len(r.waiting) && len(r.started) < free; r.whead++ {
		j := r.waiting[r.whead]
		r.waiting[r.whead] = job{}
		if j.l.lost() {
			r.res.drop(s, []finished{{s: s, l: j.l}})
			continue
		}
		r.started = append(r.started, j)
	}
	if r.whead == len(r.waiting) {
		r.waiting, r.whead = r.waiting[:0], 0 // reuse the array
	}
	if len(r.started) > 0 {
		r.res.started(len(r.started))
		r.pool.add(r.started)
		clear(r.started)
	}
	return len(r.started)
}

// endHandedOver cancels the handlers of the leases kept for a next
// session that will not come.
func (r *runner) endHandedOver() {
	for _, l := range r.handedOver {
		l.end(ErrLeaseLost)
	}
	r.handedOver = nil
}

// overstayIn returns how long the tasks waiting to start may wait yet
// before they are given back (<= 0: now): until no handler has started or
// returned for ten times the mean handler time took, and at least 20 ms.
// A worker takes tasks beyond its free slots (prefetch) only while
// handlers take less than a round trip; one that stands still for much
// longer holds tasks that another, idle worker could run.
func (r *runner) overstayIn(now time.Time, took time.Duration) time.Duration {
	still := now.Sub(time.Unix(0, r.res.progress.Load()))
	return max(10*took, minOverstay) - still
}

// minOverstay is the least time tasks wait to start before they are given
// back, so that a pause of the handlers (a collection, a slow call) does
// not send quick tasks round.
const minOverstay = 20 * time.Millisecond

// armOverstay sets the overstay timer to fire in d, unless it is set to
// fire still (earlier, as progress since only moves the time later: serve
// looks again then), and returns its channel. Setting it for every round
// cost a default worker a tenth of its rate.
func (r *runner) armOverstay(now time.Time, d time.Duration) <-chan time.Time {
	switch {
	case r.overstay == nil:
		r.overstay = time.NewTimer(d)
	case r.overstayAt.After(now):
		return r.overstay.C
	default:
		r.overstay.Reset(d)
	}
	r.overstayAt = now.Add(d)
	return r.overstay.C
}

// knownSlow reports whether the handlers are measured slower than the
// prefetch allows any task to wait for (it would take none): a task waiting
// here then came on a get sized before that was known. (prefetch reads
// what the getter writes: call it only while no get is out.)
func (r *runner) knownSlow(t tally) bool {
	return t.took > 0 && r.res.rtt.min() > 0 && r.prefetch(t) == 0
}

// Why release gives tasks back.
const (
	releaseDraining = "draining"
	releaseStalled  = "no task started or ended for a while"
	releaseSlow     = "tasks are slow: none should wait here"
)

// release gives back to the master the tasks of s taken here that cannot
// start now, those waiting for a slot and those queued in the pool behind
// its free slots (Concurrency 1), for other workers to take, in front of
// their queue (on a single master with no attempt used; a cluster counts
// the delivery). Tasks of an earlier session (handed over to this one)
// stay, to run here. A master that does not know the call (an older one)
// is not asked again on this connection, and the tasks stay; any other
// failure counts as a release, as the connection is lost or the leases run
// out anyway: they are not run here, so that none runs twice.
func (r *runner) release(s *session, why string) {
	var give []job
	var keptQueued []job
	for _, j := range r.pool.takeBeyondSlots() { // counted running
		if j.s == s && !j.l.lost() {
			give = append(give, j)
		} else {
			keptQueued = append(keptQueued, j)
		}
	}
	queued := len(give)
	kept := r.waiting[:0]
	for _, j := range r.waiting[r.whead:] {
		if j.s == s && !j.l.lost() {
			give = append(give, j)
		} else {
			kept = append(kept, j)
		}
	}
	clear(r.waiting[len(kept):])
	r.waiting, r.whead = kept, 0
	r.pool.add(keptQueued)
	if len(give) == 0 {
		return
	}
	tasks := make([]wire.Task, len(give))
	for i, j := range give {
		tasks[i] = wire.Task{ID: j.t.ID, Attempt: j.t.Attempt, Token: j.t.Token}
	}
	ctx, cancel := context.WithTimeout(s.ctx, releaseTimeout)
	err := s.c.Release(ctx, r.cfg.Tasks, tasks)
	cancel()
	if errors.Is(err, wire.ErrUnknownOp) || errors.Is(err, wire.ErrBadRequest) {
		r.noRelease = true
		r.log.Debug("the master cannot take back tasks not started; they run here", "tasks", len(give), "err", err)
		r.pool.add(give[:queued])
		r.waiting = append(r.waiting, give[queued:]...)
		return
	}
	for _, j := range give[:queued] {
		r.res.dropUnrun(j.s, j.l)
	}
	for _, j := range give[queued:] {
		r.res.drop(j.s, []finished{{s: j.s, l: j.l}})
	}
	if why == releaseStalled {
		// The handlers stood still that long: no quicker, for the
		// prefetch, until they show it (else the next get would take
		// the tasks back).
		r.res.stalled(time.Since(time.Unix(0, r.res.progress.Load())))
	}
	if err != nil {
		r.log.Debug("giving back tasks not started failed; they are not run here", "tasks", len(give), "err", err)
		return
	}
	r.log.Info("gave back tasks not started, for other workers", "tasks", len(give), "why", why)
}

// giveBack ends a drain that ran past Config.DrainTimeout, or, if now,
// one whose cause is marked by GiveBackNow: the tasks of s whose handlers
// have not returned are given back to the master for other workers
// (running or waiting to start), their handlers' contexts cancelled with
// cause ErrDrainTimeout. What those handlers return is dropped
// (session.completing); the outcomes of the others are sent. A failed
// release leaves the tasks to their leases.
func (r *runner) giveBack(s *session, now bool) {
	ls := s.giveUp(ErrDrainTimeout)
	for _, j := range r.pool.takeBeyondSlots() {
		r.res.dropUnrun(j.s, j.l)
	}
	r.dropWaiting(true)
	if len(ls) == 0 {
		return
	}
	tasks := make([]wire.Task, len(ls))
	for i, l := range ls {
		tasks[i] = wire.Task{ID: l.id, Attempt: l.attempt, Token: l.token}
	}
	ctx, cancel := context.WithTimeout(r.base, releaseTimeout)
	err := s.c.Release(ctx, r.cfg.Tasks, tasks)
	cancel()
	why, timeout := "drain timed out", any(r.cfg.DrainTimeout)
	if now {
		why, timeout = "stopping at once", "none"
	}
	if err != nil {
		r.log.Warn(why+"; running tasks cancelled, but not given back: they run again once their leases run out",
			"drain_timeout", timeout, "tasks", len(ls), "err", err)
		return
	}
	r.log.Warn(why+"; running tasks cancelled and given back, for other workers",
		"drain_timeout", timeout, "tasks", len(ls))
}

// releaseTimeout bounds a release: on a master that does not answer, the
// tasks' leases run out instead.
const releaseTimeout = 5 * time.Second

// dropWaiting forgets the waiting tasks: their session has lost its
// connection, and the master requeues them, or giveBack has released
// them. Unless all is set, it keeps those whose leases go over to the
// next session.
func (r *runner) dropWaiting(all bool) {
	kept := r.waiting[:0]
	for _, j := range r.waiting[r.whead:] {
		if j.l.handover && !all {
			kept = append(kept, j)
			continue
		}
		r.res.drop(j.s, []finished{{s: j.s, l: j.l}})
	}
	clear(r.waiting[len(kept):])
	r.waiting, r.whead = kept, 0
}

// pause waits for d and reports true if the worker should stop instead:
// ctx was cancelled, or IdleExit passed.
func (r *runner) pause(ctx context.Context, d time.Duration) (stop bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		idle.Stop()
		if r.cfg.IdleExit > 0 {
			left, ok := r.res.idleLeft()
			if ok && left <= 0 {
				r.log.Info("idle; stopping", "idle_exit", r.cfg.IdleExit)
				return true
			}
			if ok {
				idle.Reset(left)
			}
		}
		select {
		case <-ctx.Done():
			return true
		case <-timer.C:
			return false
		case <-r.res.changed:
		case <-idle.C:
		}
	}
}

// backoff yields exponentially growing delays with jitter.
type backoff struct {
	min, max, cur time.Duration
}

// next returns the next delay: the current one, doubled each call up to
// max, less a random part of up to half, so that workers that lost the
// same master do not all come back at once.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return b.cur - half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }
