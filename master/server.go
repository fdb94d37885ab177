package master

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/internal/rawsock"
	"github.com/qm-dev/qm/master/pymanager"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
	"github.com/qm-dev/qm/wire"
)

// Server is a qm master. Create it with New, run it with Serve, stop it
// with Shutdown or Close.
type Server struct {
	cfg    Config
	log    *slog.Logger
	queues Queues      // *queue.Manager (queues.go)
	store  store.Store // nil without a DataDir
	// confirmer is queues, if it is told of NoAck replies written.
	confirmer DeliveryConfirmer
	// asker is queues, if its server is a gateway of a cluster whose
	// gateways ask each other what only each knows (gateways.go).
	asker GatewayAsker
	// limiter is queues, if it bounds an item's size.
	limiter ItemLimiter
	// keeper is queues, if they keep deletions across a restart.
	keeper DeletionKeeper

	// ctx is cancelled when the server stops; blocked gets return at once.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*clientConn]struct{}
	// closing is set, under mu, when Shutdown or Close begins: goRun and
	// addConn check it under mu, so nothing starts after; every request
	// reads it without the lock.
	closing atomic.Bool
	wg      sync.WaitGroup // every goroutine the server started

	nextClientID atomic.Uint64

	// Resource limits (limits.go).
	unauth    atomic.Int64 // connections in their handshake
	authed    atomic.Int64 // authenticated connections, counted against MaxConns
	authFails *failTracker
	mem       *memGauge
	unauthLog logEvery // refusals at MaxUnauthConns
	fullLog   logEvery // refusals at MaxConns
	limitLog  logEvery // refused streams and puts
	// deadLog paces the log of dead-lettered tasks: a worker whose every
	// task fails (a broken command) dead-letters hundreds a second;
	// deadUnlogged counts those it left out since its last line.
	deadLog      logEvery
	deadUnlogged atomic.Int64

	// resultQueues maps a task queue to the result queue its workers last
	// named, where a dead task without a ReplyTo gets its error result.
	resultQueues sync.Map
	// rqKeeper is queues, if they keep resultQueues across a restart;
	// rqKeepMu orders its changes (keepResultQueue) and guards rqChanged,
	// the queues whose result queue changed and is not kept yet, which
	// keepChangedResultQueues keeps when rqKick says.
	rqKeeper  ResultQueueKeeper
	rqKeepMu  sync.Mutex
	rqChanged map[string]struct{}
	rqKick    chan struct{}
	// deadAwaiting holds, by task queue, the error results of dead tasks
	// without a ReplyTo whose queue's result queue is not known yet (as
	// after a restart, before its workers complete a task):
	// awaitResultQueue.
	deadAwaitingMu sync.Mutex
	deadAwaiting   map[string][]wire.Result
	deadAwaitingN  int // results in deadAwaiting
	// deleted are the queues clients deleted: results of tasks put before
	// go nowhere (deleted.go).
	deleted deletedQueues

	py *pymanager.Server // serves Python BaseManager clients (python.go)

	access accessControl // the keys and what each may do (acl.go)

	metrics *metrics  // Prometheus metrics (metrics.go)
	http    adminHTTP // the operators' HTTP endpoints (adminhttp.go)
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*clientConn]struct{}),
		authFails: newFailTracker(&cfg),
		mem:       newMemGauge(cfg.MaxMemory),
		unauthLog: logEvery{period: time.Second},
		fullLog:   logEvery{period: time.Second},
		limitLog:  logEvery{period: time.Second},
		deadLog:   logEvery{period: time.Second},
	}
	s.access.init(&s.cfg)
	s.metrics = newMetrics(s)
	qcfg := cfg.queueConfig(s.publishDeadResult)
	if cfg.OpenQueues != nil {
		qs, err := cfg.OpenQueues(qcfg)
		if err != nil {
			cancel()
			return nil, err
		}
		s.queues = qs
	} else if err := s.openLocalQueues(qcfg); err != nil {
		cancel()
		return nil, err
	}
	s.confirmer, _ = s.queues.(DeliveryConfirmer)
	s.asker, _ = s.queues.(GatewayAsker)
	s.limiter, _ = s.queues.(ItemLimiter)
	s.keeper, _ = s.queues.(DeletionKeeper)
	// An in-memory master has nothing to keep, and no goroutine to run
	// for it.
	if k, ok := s.queues.(ResultQueueKeeper); ok && k.KeepsResultQueues() {
		// Before ReapLeases, which publishes the error results of the
		// tasks dead-lettered at start-up: those go to their queues'
		// result queues at once, rather than waiting for a worker.
		s.rqKeeper = k
		for q, rq := range k.ResultQueues() {
			s.resultQueues.Store(q, rq)
		}
		s.rqChanged, s.rqKick = make(map[string]struct{}), make(chan struct{}, 1)
		s.goRun(s.keepChangedResultQueues)
	}
	s.py = s.newPyManager()
	if s.asker != nil {
		if err := s.answerGateways(s.asker); err != nil {
			s.queues.Close()
			cancel()
			return nil, err
		}
	}
	qs := s.queues
	if !s.goRun(func() { qs.ReapLeases(s.ctx.Done(), s.leasesExpired) }) {
		panic("unreachable: new server already closing")
	}
	if s.keeper != nil {
		err := s.recallDeletions()
		if w, ok := s.keeper.(DeletionWatcher); ok {
			s.goRun(func() { s.watchDeletions(w, err != nil) })
		} else if err != nil {
			s.goRun(s.recallDeletionsLater)
		}
		if err != nil {
			s.log.Warn("the deletions of queues kept are not read yet; trying again every few seconds", "err", err)
		}
	}
	return s, nil
}

// maxDeadAwaiting bounds the error results kept waiting for their
// queues' result queues to be known, over all queues: some 20 MB at most
// (an error is cut to 2 KiB). A queue whose workers name no result queue
// keeps them for good; past the bound, the results are dropped (their
// tasks are in the dead-letter queue all the same).
const maxDeadAwaiting = 10000

// awaitResultQueue returns the result queue of q's workers, if known;
// else it keeps result, the error result of a dead task of q that has no
// ReplyTo, until they name it (resultQueueKnown).
func (s *Server) awaitResultQueue(q string, result wire.Result) (string, bool) {
	if rq, ok := s.resultQueues.Load(q); ok {
		return rq.(string), true
	}
	s.deadAwaitingMu.Lock()
	defer s.deadAwaitingMu.Unlock()
	// Again under the lock, which resultQueueKnown takes after it
	// stores the queue: one it learns now is seen here, or drains this.
	if rq, ok := s.resultQueues.Load(q); ok {
		return rq.(string), true
	}
	if s.deadAwaitingN >= maxDeadAwaiting {
		return "", false // the task is in the dead-letter queue: the result is all that is lost
	}
	if s.deadAwaiting == nil {
		s.deadAwaiting = make(map[string][]wire.Result)
	}
	s.deadAwaiting[q] = append(s.deadAwaiting[q], result)
	s.deadAwaitingN++
	return "", false
}

// dropAwaiting forgets the error results waiting for the result queue of
// q, deleted.
func (s *Server) dropAwaiting(q string) {
	s.deadAwaitingMu.Lock()
	defer s.deadAwaitingMu.Unlock()
	s.deadAwaitingN -= len(s.deadAwaiting[q])
	delete(s.deadAwaiting, q)
}

// resultQueueKnown notes that q's workers publish their results to rq,
// publishes there the error results waiting for it, and, if it is new,
// keeps it across a restart (keepResultQueue). Called by every
// completion: when rq is known already, it is one map lookup.
func (s *Server) resultQueueKnown(q, rq string) {
	cur, had := s.resultQueues.Load(q)
	if had && cur.(string) == rq {
		return // a store allocates even when the value is the same
	}
	s.resultQueues.Store(q, rq)
	s.deadAwaitingMu.Lock()
	results := s.deadAwaiting[q]
	s.deadAwaitingN -= len(results)
	delete(s.deadAwaiting, q)
	s.deadAwaitingMu.Unlock()
	if len(results) > 0 {
		s.goRun(func() { s.publishDeadResults(rq, results, nil) })
	}
	if !had {
		s.keepResultQueue(q)
		return
	}
	// Changed: kept within a second, by keepChangedResultQueues. Workers
	// of one queue that name two result queues would otherwise have the
	// file written, and fsynced, at every other completion.
	if s.rqKeeper != nil {
		s.rqKeepMu.Lock()
		s.rqChanged[q] = struct{}{}
		s.rqKeepMu.Unlock()
		select {
		case s.rqKick <- struct{}{}:
		default:
		}
	}
}

// keepChangedResultQueues keeps the result queues that changed
// (resultQueueKnown), at most once a second, and those left as the
// master stops.
func (s *Server) keepChangedResultQueues() {
	pause := time.NewTimer(time.Second)
	defer pause.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return // closeAll keeps what changes after
		case <-s.rqKick:
		}
		s.keepChanged()
		pause.Reset(time.Second)
		select {
		case <-s.ctx.Done():
			return
		case <-pause.C:
		}
	}
}

// keepChanged keeps the result queues that changed.
func (s *Server) keepChanged() {
	if s.rqKeeper == nil {
		return
	}
	s.rqKeepMu.Lock()
	defer s.rqKeepMu.Unlock()
	for q := range s.rqChanged {
		s.storeResultQueue(q)
	}
	clear(s.rqChanged)
}

// forgetResultQueue forgets the result queue of q, deleted: a queue made
// anew by that name learns its own.
func (s *Server) forgetResultQueue(q string) {
	if _, ok := s.resultQueues.LoadAndDelete(q); ok {
		s.keepResultQueue(q)
	}
}

// keepResultQueue stores q's result queue, as resultQueues has it now,
// where the queues keep it across a restart. It is called when q gets
// its first result queue or is deleted (rarely), outside every lock
// other completions take: a file is written and fsynced. Each call
// stores what resultQueues holds when it has rqKeepMu, so that calls
// racing for one queue leave the last change stored. A failure (a full
// disk) is logged: the result queue stays known until the master stops.
func (s *Server) keepResultQueue(q string) {
	if s.rqKeeper == nil {
		return
	}
	s.rqKeepMu.Lock()
	defer s.rqKeepMu.Unlock()
	delete(s.rqChanged, q)
	s.storeResultQueue(q)
}

// storeResultQueue is keepResultQueue with rqKeepMu held.
func (s *Server) storeResultQueue(q string) {
	var rq string
	if v, ok := s.resultQueues.Load(q); ok {
		rq = v.(string)
	}
	err := s.rqKeeper.KeepResultQueue(q, rq)
	switch {
	case err == nil:
	case rq == "":
		s.log.Warn("a deleted queue's result queue is not forgotten in the data directory: after a restart, error results of a queue made anew by that name go there until its workers name theirs",
			"queue", q, "err", err)
	default:
		s.log.Warn("a queue's result queue is not stored in the data directory: after a restart, error results of the queue's dead tasks without a reply queue wait in memory until a worker names it again, and are lost if the master stops before (the data directory tries again with its next change of a result queue, and as the master stops)",
			"queue", q, "result_queue", rq, "err", err)
	}
}

// deadResultWorker names the writer of a dead task's error result.
const deadResultWorker = "qmaster (dead-letter)"

// openLocalQueues opens the queues of this process, recovering them from
// the data directory if there is one.
func (s *Server) openLocalQueues(qcfg queue.Config) error {
	cfg := s.cfg
	if cfg.DataDir != "" {
		st, err := s.openStore()
		if err != nil {
			return err
		}
		s.store, qcfg.Store = st, st
	}
	start := time.Now()
	// Recovery builds a large heap of live objects fast, with nothing to
	// free until it ends: collecting it at the usual pace only re-marks
	// it over and over.
	gcPercent := debug.SetGCPercent(800)
	qm, err := queue.New(qcfg)
	debug.SetGCPercent(gcPercent)
	if err != nil {
		if s.store != nil {
			s.store.Close()
		}
		return err
	}
	s.queues = qm
	if s.store != nil {
		// Loading the log took several times the memory its tasks keep
		// (the files, the index of live tasks, the sort). That is garbage
		// now; give it back to the system at once rather than at the
		// runtime's background pace, which left a restarted master at 5x
		// the memory of one that had never stopped.
		debug.FreeOSMemory()
		var tasks, queues int
		all, _ := qm.AllStats() // in memory: never fails
		for _, st := range all {
			tasks += st.Ready + st.Delayed // dead ones are ready in their dead-letter queues
			queues++
		}
		s.log.Info("queues recovered", "data_dir", cfg.DataDir, "tasks", tasks, "queues", queues,
			"fsync", cfg.Fsync.String(), "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// goRun starts f as a goroutine the server owns, unless the server is
// stopping; it reports whether f was started.
func (s *Server) goRun(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// Serve accepts connections on ln until Shutdown or Close, and then
// returns ErrServerClosed. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		conn = rawsock.Wrap(conn)
		if s.admit(conn, time.Now()) != nil {
			continue
		}
		s.unauth.Add(1)
		c := newClientConn(s, conn)
		if !s.addConn(c) || !s.goRun(c.serve) {
			s.unauth.Add(-1)
			c.close()
			s.removeConn(c)
			return ErrServerClosed
		}
	}
}

func (s *Server) isClosing() bool { return s.closing.Load() }

// Shutdown stops the server gracefully: it stops accepting, lets calls in
// progress answer (blocked gets answer "master shutting down"), requeues every unacked
// lease, and closes the clients. If ctx ends first, it closes what is left
// and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	s.cancel() // blocked gets return now
	s.shutdownHTTP(ctx)
	for _, c := range conns {
		c.goAway()
	}
	var err error
	for _, c := range conns {
		if werr := c.waitIdle(ctx); werr != nil {
			err = werr
			break
		}
	}
	s.closeAll()
	return err
}

// Close stops the server at once: listeners and connections are closed and
// leases requeued.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.closeAll()
	return nil
}

func (s *Server) closeAll() {
	s.mu.Lock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	s.closeHTTP()
	s.wg.Wait()
	s.keepChanged() // by the calls that ended after keepChangedResultQueues
	s.queues.Close()
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			s.log.Error("close data dir", "data_dir", s.cfg.DataDir, "err", err)
		}
	}
}

// putResultItems puts results into queue. While the queues are
// unavailable (a gateway's engine electing a leader) it tries again until
// they take the results or the master stops: the tasks of these results
// are acked only once they are in, so a worker's completion waits rather
// than a result being lost. unwanted is queue.PutRequest.Unwanted.
func (s *Server) putResultItems(q string, items []queue.Item, of queue.ResultsOf, unwanted func() bool) error {
	for retry := time.Duration(0); ; {
		_, err := s.queues.Put(s.ctx, queue.PutRequest{Queue: q, Items: items, Results: true, ResultsOf: of, Unwanted: unwanted})
		if !errors.Is(err, queue.ErrUnavailable) {
			return err
		}
		if retry == 0 {
			s.log.Warn("results held until the queues are available again", "queue", q, "results", len(items), "err", err)
		}
		if !s.backOff(&retry) {
			return err
		}
	}
}

// backOff waits before the next try of a call the queues or the data
// directory refused for now: 10 ms after the first, doubling, at most
// 500 ms. It reports false, at once, once the server stops.
func (s *Server) backOff(wait *time.Duration) bool {
	*wait = min(max(2**wait, 10*time.Millisecond), 500*time.Millisecond)
	select {
	case <-s.ctx.Done():
		return false
	case <-time.After(*wait):
		return true
	}
}

// awaitWritable waits, if wait, while the data directory refuses writes,
// and reports whether it takes them; n results for queue are held.
func (s *Server) awaitWritable(queue string, n int, wait bool) bool {
	for retry := time.Duration(0); s.store != nil; {
		err := s.store.Writable()
		if err == nil {
			return true
		}
		if !wait {
			return false
		}
		if retry == 0 {
			s.log.Warn("results held until the data directory takes writes again", "queue", queue, "results", n, "err", err)
		}
		if !s.backOff(&retry) {
			// Shutdown waits for this call: give up. The acks of these
			// tasks most likely fail to be written too, and then the
			// tasks run again after a restart.
			s.log.Error("publish results: master stopping; results dropped", "queue", queue, "results", n, "err", err)
			return true
		}
	}
	return true
}

// openStore opens the data directory, reporting the store's events (a
// torn tail dropped, a full disk, a compaction) in the server's log.
func (s *Server) openStore() (store.Store, error) {
	return seglog.Open(s.cfg.DataDir, seglog.Options{
		Fsync:    s.cfg.Fsync,
		Interval: s.cfg.FsyncInterval,
		OnSync:   func(d time.Duration) { s.metrics.fsync.Observe(d.Seconds()) },
		OnEvent: func(msg string, err error, attrs ...any) {
			if err != nil {
				s.log.Warn(msg, append(attrs, "err", err)...)
				return
			}
			s.log.Info(msg, attrs...)
		},
	})
}

// addConn registers a connection so that Shutdown and Close reach it.
func (s *Server) addConn(c *clientConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) removeConn(c *clientConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) clientInfos() []wire.ClientInfo {
	s.mu.Lock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]wire.ClientInfo, 0, len(conns))
	for _, c := range conns {
		if info, ok := c.info(); ok {
			info.InFlight = s.queues.LeasedBy(info.ID)
			out = append(out, info)
		}
	}
	sortClients(out)
	return out
}

// leasesExpired reports leases that ran out, whose tasks the reaper
// requeued (or dead-lettered).
func (s *Server) leasesExpired(queue string, n int) {
	s.log.Info("leases expired; tasks requeued", "queue", queue, "count", n)
	s.metrics.leaseExpiries.Add(float64(n))
}

// publishDeadResult publishes an error result for a task that ran out of
// attempts, so that a producer waiting for it is not left hanging.
func (s *Server) publishDeadResult(q string, t queue.Task) {
	if s.deadLog.ok(time.Now()) {
		s.log.Warn("task dead-lettered (logged at most once a second)", "queue", q, "task", t.ID, "attempts", t.Attempts, "err", t.LastError,
			"more_unlogged", s.deadUnlogged.Swap(0))
	} else {
		s.deadUnlogged.Add(1)
	}
	// The master wrote it, as the task went to the dead-letter queue: no
	// worker's result.
	result := wire.Result{TaskID: t.ID, Worker: deadResultWorker, Attempt: t.Attempts, Error: deadMessage(t)}
	dest := t.ReplyTo
	if dest == "" {
		var ok bool
		if dest, ok = s.awaitResultQueue(q, result); !ok {
			return
		}
	}
	if at, ok := s.deleted.since(dest); ok && t.ReplyTo != "" && t.Enqueued.Before(at) {
		return // its producer deleted the queue: no one waits for it
	}
	s.publishDeadResults(dest, []wire.Result{result}, []queue.Task{t})
}

// publishDeadResults puts the error results of dead tasks into queue
// dest; whose, if not nil, are the tasks, for the check of a reply queue
// deleted since they were put (putResults).
func (s *Server) publishDeadResults(dest string, results []wire.Result, whose []queue.Task) {
	dests := make([]string, len(results))
	for i := range dests {
		dests[i] = dest
	}
	if done, _ := s.putResults(dests, results, queue.ResultsOf{}, whose, false); !done {
		// The data directory refuses writes: keep trying without holding
		// up the lease reaper, which may be the caller.
		s.goRun(func() { _, _ = s.putResults(dests, results, queue.ResultsOf{}, whose, true) })
	}
}

// publish puts results[i] into queue dests[i]: one put per queue, the
// payloads encoded side by side in one buffer. of.Tasks[i], if of.Tasks
// is not nil, is the task results[i] is of, as handed out, of queue
// of.Queue (queue.PutRequest.ResultsOf). A result is never refused
// for a full queue. While the data directory refuses writes (a full
// disk), publish waits for it, retrying, until the results are in or the
// master stops: its caller acked their tasks in memory already and logs
// the acks only after it returns, so a result dropped here would be lost
// for good, and a result held here is redone after a crash.
//
// It returns an error if some result is neither stored nor queued (queues
// behind OpenQueues that stayed unavailable until the master stopped):
// the caller must then not ack their tasks, which run again.
func (s *Server) publish(dests []string, results []wire.Result, of queue.ResultsOf) error {
	_, err := s.putResults(dests, results, of, of.Tasks, true)
	return err
}

// putResults is publish. Without wait, it gives up at the first put the
// store would refuse and reports false; it reports true once every
// result is in, or an error (logged) made it drop some, and then that
// error if the results it dropped are not queued either. whose[i], if
// whose is not nil, is the task of results[i], for the queues' check of a
// reply queue deleted since (queue.PutRequest.Unwanted).
func (s *Server) putResults(dests []string, results []wire.Result, of queue.ResultsOf, whose []queue.Task, wait bool) (bool, error) {
	if len(results) == 0 {
		return true, nil
	}
	size := 0
	for i := range results {
		size += wire.ResultSize(&results[i])
	}
	buf := make([]byte, 0, size)
	ends := make([]int, len(results))
	for i := range results {
		buf = wire.AppendResult(buf, &results[i])
		ends[i] = len(buf)
	}
	// Sized once: a queue.Item is over 100 bytes, and growing the slice by
	// doubling was a third of the bytes a busy master allocated.
	items := make([]queue.Item, 0, len(results))
	item := func(i int) queue.Item {
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		return queue.Item{Payload: buf[start:ends[i]:ends[i]]}
	}
	// One put per queue, its results in the completion's order: a
	// completion sent again through another gateway, some of whose tasks
	// it refuses, must put each queue's others alike (the IDs of their
	// messages, by which JetStream keeps each once, depend on what each
	// message carries; jsqueue's packResults). Results of one complete
	// nearly always share one queue, and are put as they are.
	queues := append(make([]string, 0, 4), dests[0]) // on the stack
	for _, d := range dests[1:] {
		if !slices.Contains(queues, d) {
			queues = append(queues, d)
		}
	}
	for _, dest := range queues {
		items = items[:0]
		resultsOf := queue.ResultsOf{Queue: of.Queue, Tasks: of.Tasks} // one queue: all of them
		mine := whose
		if len(queues) > 1 {
			resultsOf.Tasks, mine = nil, nil
		}
		for i := range results {
			if dests[i] != dest {
				continue
			}
			items = append(items, item(i))
			if len(queues) > 1 && of.Tasks != nil {
				resultsOf.Tasks = append(resultsOf.Tasks, of.Tasks[i])
			}
			if len(queues) > 1 && whose != nil {
				mine = append(mine, whose[i])
			}
		}
		if !s.awaitWritable(dest, len(items), wait) {
			return false, nil
		}
		err := s.putResultItems(dest, items, resultsOf, s.deleted.unwanted(dest, mine))
		if err != nil && s.cfg.OpenQueues != nil {
			s.log.Error("publish results failed; their tasks are not acked and run again", "queue", dest, "results", len(items), "err", err)
			return true, err
		}
		switch {
		case errors.Is(err, queue.ErrQueuedNotStored):
			// A put of results the log fails to write has its items in
			// the queue already (they are taken while the disk is full,
			// with their tasks' acks), and the log retries the write, so
			// they are not put again.
			s.log.Warn("publish results: queued, not yet written to the data directory (its log retries the write)",
				"queue", dest, "results", len(items), "err", err)
		case err != nil: // refused before it was queued (a master closing): its acks were not stored either
			s.log.Error("publish results failed", "queue", dest, "results", len(items), "err", err)
		}
	}
	return true, nil
}
