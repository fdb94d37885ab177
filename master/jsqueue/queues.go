package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// Config of Queues. Zero values mean the defaults.
type Config struct {
	// Conn is the connection to JetStream; required. Queues does not
	// close it.
	Conn *nats.Conn
	// Replicas is how many JetStream nodes keep each queue's stream; 0
	// means 1. Three survive the loss of any one node.
	Replicas int
	// MaxAttempts, DefaultLease, OnDead and the retry backoff mean what
	// they mean in queue.Config.
	MaxAttempts                      int
	RetryBackoffMin, RetryBackoffMax time.Duration
	// MaxLen, if not 0, is the most tasks (ready and leased) a queue
	// holds: a put waits for room (see Put). Results and dead-letter
	// queues' tasks are never refused.
	MaxLen       int
	DefaultLease time.Duration
	OnDead       func(queue string, t queue.Task)
	// DedupWindow is how long a put's idempotency key (queue.Item.Key,
	// JetStream's Nats-Msg-Id) is remembered: the Duplicates window of the
	// streams this gateway creates; 0 means queue.DefaultDedupWindow.
	DedupWindow time.Duration
	// AckWait is how long JetStream waits for a gateway that stopped
	// renewing a lease (it died, or lost its connection) before it
	// redelivers the task; 0 means 30s. A live gateway renews its leases
	// every third of it, so it bounds only the time tasks stay out after a
	// gateway is lost, not the leases clients ask for.
	AckWait time.Duration
	// RequestTimeout bounds each call to JetStream that is not a blocking
	// get; 0 means 10s.
	RequestTimeout time.Duration
	// Pack, if over 1, is the most tasks of one put stored in one
	// JetStream message (pack.go), at most MaxPack; 0 or 1 stores each
	// task in a message of its own.
	Pack int
	// HoldFor is how long the tasks of a pack wait in this gateway for
	// its gets; then they are stored again, alone, at the end of their
	// queue, for every gateway. 0 means 1s.
	HoldFor time.Duration
	// PackSpan bounds the packs of a queue's tasks by the gateways that
	// hand them out: none makes a pack bigger than its gets took in
	// PackSpan lately (packsize.go). 0 means 250ms; negative keeps every
	// pack at Pack.
	PackSpan time.Duration
	// Logger receives the gateway's warnings; nil discards them.
	Logger *slog.Logger
	// Writable, if set, reports why a put of tasks would not be stored
	// now, or nil: the embedded node's store is full (Node.Writable).
	// Such puts are refused at once, and no queue is made meanwhile;
	// results are put all the same into queues that exist.
	Writable func() error
}

func (c Config) withDefaults() Config {
	if c.DedupWindow == 0 {
		c.DedupWindow = queue.DefaultDedupWindow
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = queue.DefaultMaxAttempts
	}
	if c.DefaultLease == 0 {
		c.DefaultLease = queue.DefaultLease
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.HoldFor == 0 {
		c.HoldFor = time.Second
	}
	if c.PackSpan == 0 {
		c.PackSpan = DefaultPackSpan
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Queues serves qm's queues from JetStream streams. Its methods are
// those of master.Queues, documented there and in package queue; where
// they differ, the method says so.
type Queues struct {
	cfg Config
	js  jetstream.JetStream
	log *slog.Logger
	// testHookSettling, if set (by tests: export_test.go), runs in Ack
	// between a completion's record writes and its acks, where a gateway
	// that dies leaves a completion settled in part.
	testHookSettling func()
	// ctx ends with Close, and with it every blocked get.
	ctx    context.Context
	cancel context.CancelFunc
	closed atomic.Bool

	mu    sync.Mutex
	known map[string]*stream // streams this gateway has opened, by queue name
	// queueOf names the queues of known by their streams' names, for
	// JetStream's advisories (followAdvisories).
	queueOf map[string]string
	leases  map[leaseKey]*lease
	owners  map[uint64]map[leaseKey]*lease
	// unconfirmed holds the deliveries of NoAck gets until the server
	// says their reply was written (Delivered) or not (Unget).
	unconfirmed map[leaseKey]*lease
	// packs are the packs this gateway holds (pack.go), by queue and
	// stream sequence.
	packs map[leaseKey]*pack
	// locals are what this gateway keeps of each queue it opened.
	locals map[string]*local
	// recordOf holds the keys of the records of packs done, whose acks
	// are being sent (packrecord.go); staleRecords those of packs acked,
	// for the reaper to delete. recordsPending counts recordOf's entries,
	// so that acks of unpacked tasks look at neither.
	// advisories follow JetStream's news of queues (followAdvisories).
	advisories     []*nats.Subscription
	recordOf       map[*nats.Msg]string
	staleRecords   []string
	recordsPending atomic.Int64
	// countsToSend are what is not yet added to the queues' counters
	// (packcount.go), by counter's subject: the tasks packs carried
	// beyond one each, and tasks gone without being done;
	// countsSent is when they last were.
	countsToSend map[string]int
	countsSent   time.Time
	// lastErr holds the error of a task's failed attempt until the task is
	// delivered again (JetStream's nak carries no text). A task
	// redelivered through another gateway reads "lease expired" instead.
	lastErr map[leaseKey]string
	// retrying holds, by queue, when the tasks stored alone that this
	// gateway failed with a retry backoff (a NAK with a delay) come due,
	// by task ID, so that its figures count them as retrying, not
	// leased: JetStream holds them as deliveries not yet acked.
	retrying map[string]map[uint64]time.Time
	stats    map[string]*counters
	// renewals are the renewals of ack timers awaiting JetStream's
	// confirmation, by the token ending their reply subject, which starts
	// with renewInbox; renewSub takes the confirmations.
	renewals map[string]renewal
	// held wakes the reaper, asleep while nothing is held (so that an
	// idle gateway does not wake every reapEvery), when a lease or an
	// unconfirmed delivery is added.
	held  chan struct{}
	reaps atomic.Int64 // reaps made, for the tests
	// readiness is Ready's last answer.
	readiness readiness
	// gatewayID names this gateway to the others, and answering is what
	// it keeps of their questions (ask.go).
	gatewayID string
	answering answering
	// putIDs starts the request IDs this gateway gives puts without keys
	// (put.go), and puts counts them.
	putIDs     string
	puts       atomic.Uint64
	renewSeq   uint64
	renewInbox string
	renewSub   *nats.Subscription
	// pulls routes the answers to the gets' pull requests.
	pulls *pulls
	// handedBack counts the deliveries given back unseen, which are no
	// attempts.
	handedBack handedBack

	// kv is the record of deliveries (handover.go), opened on first use
	// under kvMu. recs, the stream of the packs' records (packrecord.go),
	// and cnts, the stream of the packs' counters (packcount.go), are
	// opened by a packing gateway's New, or on first use, each under a
	// lock of its own: the creation of a replicated stream in a busy
	// cluster can take seconds, and must hold up nothing else.
	kvMu     sync.Mutex
	kv       jetstream.KeyValue
	kvStream jetstream.Stream // kv's stream, for its entries' headers
	// writeID is newWriteID; a test makes two writes one sent again.
	writeID func() string
	bg      sync.WaitGroup // New's opening of recs and cnts
	recsMu  sync.Mutex
	recs    jetstream.Stream
	cntsMu  sync.Mutex // held briefly, to read or set cnts
	cnts    jetstream.Stream
	// cntsMaking is held while cnts is made: a gateway's lookup of the
	// stream another made (countsIfAny, on a queue's deletion) does not
	// wait for this one's creation.
	cntsMaking sync.Mutex

	// acking counts the acks of NoAck deliveries in flight (Delivered),
	// which Close waits for before it ends q.ctx. Added to under mu while
	// closed is not set.
	acking sync.WaitGroup

	// policies are the queues' retry policies, by queue, as the bucket
	// polKV had them (policy.go); policyKeys names the queue of each of
	// its keys. Under polMu, which is taken with q.mu held, never the
	// other way round.
	polMu      sync.Mutex
	policies   map[string]queue.Policy
	policyKeys map[string]string
	policyRevs map[string]uint64 // by key: the bucket's revision noted last
	polKV      jetstream.KeyValue
	polLooked  time.Time     // when lookForPolicies last looked for polKV
	polMade    chan struct{} // the bucket is there: watch it

	// sizes are the pack sizes gateways said (packsize.go), by the
	// queue's token, then by gateway; under sizeMu, never held with
	// q.mu.
	sizeMu  sync.Mutex
	sizes   map[string]map[string]sizeSaid
	sizeSub *nats.Subscription
	// wantedSub takes the other gateways' gets that found no task
	// (wanted.go).
	wantedSub *nats.Subscription
	// delKV keeps the deletions of queues (deletions.go), opened on
	// first use under delMu.
	delMu sync.Mutex
	delKV jetstream.KeyValue
	// layoutKV keeps the pack sizes of puts with request IDs, opened on
	// first use under layoutMu.
	layoutMu     sync.Mutex
	layoutKV     jetstream.KeyValue
	layoutTTL    time.Duration
	layoutLooked time.Time
}

// stream is one queue's stream and its consumer.
type stream struct {
	queue   string
	subject string
	st      jetstream.Stream
	cons    jetstream.Consumer
	// next is the subject of the consumer's pull requests.
	next string
	// ackWait is the consumer's: the first gateway to open the queue set
	// it, so it may differ from this one's Config.AckWait.
	ackWait time.Duration
	// putMu makes this gateway's puts to a queue with a max length check
	// its length and publish one at a time.
	putMu sync.Mutex
	// schedules is set once the stream is known to take delayed tasks
	// (enableSchedules).
	schedules atomic.Bool
	// levels are the queue's priority levels above 0, highest first
	// (priority.go); levelMu makes one at a time.
	levels  atomic.Pointer[[]*level]
	levelMu sync.Mutex
	// levelsUnread says that some levels could not be opened when s was
	// (JetStream slow to answer): watchLevels opens them.
	levelsUnread atomic.Bool
	// local is what this gateway keeps of the queue, shared by every
	// stream value it opens for it (a stream is opened anew after errors).
	*local
}

// replicas is how many nodes keep s's stream.
func (s *stream) replicas() int { return s.st.CachedInfo().Config.Replicas }

// local is what a gateway keeps of a queue besides JetStream's stream
// and consumer, guarded by Queues.mu.
type local struct {
	// held are the tasks of held packs waiting to be handed out, in order.
	held []heldTask
	// paused is set while the queue is paused, as this gateway last saw:
	// its own SetPaused, the pause's advisory, a look at the consumer
	// (moveOverdue), or the consumer as the queue was opened. Held
	// tasks are not handed out. pauseSeq counts its changes (setPaused).
	paused   bool
	pauseSeq uint64
	// waiting are the gets waiting for a task, woken when one is held.
	waiting map[*getWait]struct{}
	// surplus is how many tasks the pulls of those with one out (of
	// priority 0, in a queue without priorities) are expected to bring
	// beyond their own gets' (waitHere): with packing, other gets
	// may wait here for them.
	surplus float64
	// perMsg is about how many tasks a message of the queue carries
	// lately (packs and plain messages may mix), for the size of pulls.
	perMsg float64
	// lookedAt is when overdue held tasks were last looked at
	// (overdueQueuesLocked).
	lookedAt time.Time
	// wantedAt is when another gateway last said that a get that could
	// not wait found none of the queue's tasks (heardWanted); wantedSaid,
	// when this one last said so (sayWanted).
	wantedAt, wantedSaid time.Time
	// demand is what the pack size this gateway says is made of.
	demand demand
	// lastDelivered is the highest consumer sequence of the deliveries of
	// priority 0 this gateway pulled.
	lastDelivered uint64
	// givenBack are the tasks stored alone that this gateway gave back
	// with a nak and no delay, by ID, each with lastDelivered as it was
	// then: while the consumer has delivered nothing since, each waits
	// for its redelivery, ready, though JetStream counts it as a
	// delivery not yet acked (givenBackWaiting).
	givenBack map[uint64]uint64
}

// getWait is a get waiting on a stream: wake cancels its pull (whose
// inbox is then drained: pulls.request). want is how many tasks it
// takes; here is set while it waits here, with no pull of its own
// (waitHere).
type getWait struct {
	wake func()
	want int
	here bool
}

// setPaused sets paused, counting the change. Called with Queues.mu held.
func (l *local) setPaused(paused bool) {
	l.paused = paused
	l.pauseSeq++
}

// wakeGets wakes up to n of the gets waiting on the queue: n tasks were
// held. A woken get drops its pull request's inbox, so no more are woken
// than there are tasks. Called with Queues.mu held.
func (l *local) wakeGets(n int) {
	// Gets waiting here first: they have no pull request to give up.
	for _, here := range []bool{true, false} {
		for w := range l.waiting {
			if n <= 0 {
				return
			}
			if w.here != here {
				continue
			}
			w.wake()
			delete(l.waiting, w)
			n--
		}
	}
}

// wakeHere wakes every get waiting here for the pulls of others: one of
// those pulls ended, and they look again (and may pull themselves).
// Called with Queues.mu held.
func (l *local) wakeHere() {
	for w := range l.waiting {
		if w.here {
			w.wake()
			delete(l.waiting, w)
		}
	}
}

// counters are what this gateway alone knows of a queue: JetStream keeps
// no count of naks or of expired leases.
type counters struct{ nacks, expired, disconnected uint64 }

// New returns Queues over cfg.Conn's JetStream.
func New(cfg Config) (*Queues, error) {
	if cfg.Conn == nil {
		return nil, fmt.Errorf("%w: jsqueue needs a NATS connection", queue.ErrBadArgument)
	}
	if cfg.Replicas < 0 || cfg.MaxAttempts < 0 || cfg.MaxLen < 0 || cfg.DefaultLease < 0 || cfg.AckWait < 0 || cfg.HoldFor < 0 {
		return nil, fmt.Errorf("%w: negative jsqueue setting", queue.ErrBadArgument)
	}
	if cfg.Pack < 0 || cfg.Pack > MaxPack {
		return nil, fmt.Errorf("%w: pack must be 0 to %d tasks, got %d", queue.ErrBadArgument, MaxPack, cfg.Pack)
	}
	cfg = cfg.withDefaults()
	// Puts of many producers share the async publisher: its default cap
	// of 4,000 acks in flight would fail a put midway.
	js, err := jetstream.New(cfg.Conn, jetstream.WithPublishAsyncTimeout(cfg.RequestTimeout),
		jetstream.WithPublishAsyncMaxPending(1<<16))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.RequestTimeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		return nil, fmt.Errorf("jetstream is not available at %s: %w", cfg.Conn.ConnectedUrlRedacted(), err)
	}
	q := &Queues{
		cfg:         cfg,
		writeID:     newWriteID,
		js:          js,
		log:         cfg.Logger,
		known:       make(map[string]*stream),
		queueOf:     make(map[string]string),
		leases:      make(map[leaseKey]*lease),
		owners:      make(map[uint64]map[leaseKey]*lease),
		unconfirmed: make(map[leaseKey]*lease),
		packs:       make(map[leaseKey]*pack),
		locals:      make(map[string]*local),
		recordOf:    make(map[*nats.Msg]string),
		lastErr:     make(map[leaseKey]string),
		retrying:    make(map[string]map[uint64]time.Time),
		stats:       make(map[string]*counters),
		renewals:    make(map[string]renewal),
		held:        make(chan struct{}, 1),
		// The inbox ends with a token of its own: renewals are told
		// apart by what follows it.
		renewInbox: cfg.Conn.NewInbox() + ".",
		putIDs:     "qm." + strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix) + ".",
		gatewayID:  newGatewayID(),
	}
	q.renewSub, err = cfg.Conn.Subscribe(q.renewInbox+"*", q.renewed)
	if err != nil {
		return nil, fmt.Errorf("jetstream: subscribe to renewals' confirmations: %w", err)
	}
	if cfg.Pack > 1 && cfg.PackSpan > 0 {
		q.sizes = make(map[string]map[string]sizeSaid)
		q.sizeSub, err = cfg.Conn.Subscribe(sizeSubjects+"*", q.heardPackSize)
		if err != nil {
			_ = q.renewSub.Unsubscribe()
			return nil, fmt.Errorf("jetstream: subscribe to the gateways' pack sizes: %w", err)
		}
	}
	// Whether this gateway packs or not: it holds the tasks of the packs
	// others put.
	q.wantedSub, err = cfg.Conn.Subscribe(wantedSubjects+"*", q.heardWanted)
	if err != nil {
		_ = q.renewSub.Unsubscribe()
		if q.sizeSub != nil {
			_ = q.sizeSub.Unsubscribe()
		}
		return nil, fmt.Errorf("jetstream: subscribe to the gateways' wanted tasks: %w", err)
	}
	q.pulls = newPulls(cfg.Conn, &q.handedBack)
	q.followAdvisories()
	if err := q.Answer(topicPurged, q.answerPurged); err != nil { // purged.go
		q.log.Warn("this gateway will not hear of purges through the others: it may hand out tasks they purged", "err", err)
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.polMade = make(chan struct{}, 1)
	q.bg.Go(q.watchPolicies)
	q.bg.Go(q.watchLevels)
	q.bg.Go(func() { q.greet(q.ctx) })
	if q.sizeSub != nil {
		q.bg.Go(q.sayPackSizes)
	}
	if cfg.Pack > 1 {
		// Made now, while the cluster is likely idle, rather than under
		// load at their first use; if they cannot be yet, they are then.
		// Not waited for: a node that restarts may not answer for a while.
		// Not cut short by Close either: the node would go on creating a
		// stream the gateway stopped waiting for, and one created while
		// the node shuts down is never stopped (its goroutines leak).
		q.bg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), q.cfg.RequestTimeout)
			defer cancel()
			if _, err := q.records(ctx); err != nil && ctx.Err() == nil {
				q.log.Warn("the packs' records not opened yet", "err", err)
			}
			if _, err := q.counts(ctx); err != nil && ctx.Err() == nil {
				q.log.Warn("the packs' counters not opened yet", "err", err)
			}
		})
	}
	return q, nil
}

// Close ends every blocked get with queue.ErrClosed and hands the tasks
// this gateway still leases, or has delivered with NoAck unconfirmed,
// back to JetStream at once, for other gateways to deliver.
func (q *Queues) Close() {
	q.mu.Lock() // deliver adds no lease once closed is set
	if q.closed.Swap(true) {
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	q.closePacks() // before cancel, which would end its puts
	q.sendCounts(q.takeCounts(time.Time{}))
	q.acking.Wait() // its tasks' leases are gone: acked, or delivered twice
	q.cancel()
	q.bg.Wait()
	_ = q.renewSub.Unsubscribe()
	if q.sizeSub != nil {
		_ = q.sizeSub.Unsubscribe()
	}
	_ = q.wantedSub.Unsubscribe()
	for _, sub := range q.advisories {
		_ = sub.Unsubscribe()
	}
	q.closeAnswering()
	q.pulls.close()
	q.mu.Lock()
	var back []*lease
	for k, l := range q.leases {
		if l.pack == nil { // packs were handed back whole, by closePacks
			back = append(back, l)
		}
		delete(q.leases, k)
	}
	clear(q.owners)
	for k, l := range q.unconfirmed {
		if !l.lost && l.pack == nil { // else JetStream may have handed it to someone else
			back = append(back, l)
		}
		delete(q.unconfirmed, k)
	}
	q.mu.Unlock()
	msgs := make([]*nats.Msg, len(back))
	for i, l := range back {
		msgs[i] = l.msg
	}
	q.answerAll(msgs, nakPayload)
}

// call returns a context for one request to JetStream.
func (q *Queues) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(q.ctx, q.cfg.RequestTimeout)
}

// callBy is call, ending at by if that comes first, but no sooner than
// floor from now (a zero by adds no bound).
func (q *Queues) callBy(by time.Time, floor time.Duration) (context.Context, context.CancelFunc) {
	now := time.Now()
	end := now.Add(q.cfg.RequestTimeout)
	if !by.IsZero() {
		if least := now.Add(floor); by.Before(least) {
			by = least
		}
		if by.Before(end) {
			end = by
		}
	}
	return context.WithDeadline(q.ctx, end)
}

// open returns queue name's stream, creating the stream and its consumer
// on first use when create is set, else queue.ErrUnknownQueue.
func (q *Queues) open(name string, create bool) (*stream, error) {
	return q.openBy(time.Time{}, name, create)
}

// openBy is open, its calls to JetStream bounded by by as well (callBy).
func (q *Queues) openBy(by time.Time, name string, create bool) (*stream, error) {
	if q.closed.Load() {
		return nil, queue.ErrClosed
	}
	if err := queue.CheckName(name); err != nil {
		return nil, err
	}
	q.mu.Lock()
	s := q.known[name]
	var pauseSeq uint64 // of the pause state this gateway knows, before the consumer's is read
	if l := q.locals[name]; l != nil {
		pauseSeq = l.pauseSeq
	}
	q.mu.Unlock()
	if s != nil {
		return s, nil
	}
	ctx, cancel := q.callBy(by, 0)
	defer cancel()
	var st jetstream.Stream
	err := retrying(ctx, func(ctx context.Context) (err error) { st, err = q.js.Stream(ctx, streamName(name)); return err })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if !create {
			return nil, queue.ErrUnknownQueue
		}
		// Not while the embedded node's store is broken: it may be
		// reading its streams again, this one among them.
		if err := q.Writable(); err != nil {
			return nil, err
		}
		cfg := jetstream.StreamConfig{
			Name:       streamName(name),
			Subjects:   []string{subject(name), packSubjects(subject(name))},
			Retention:  jetstream.WorkQueuePolicy,
			Storage:    jetstream.FileStorage,
			Replicas:   q.cfg.Replicas,
			Duplicates: q.cfg.DedupWindow,
			Metadata:   map[string]string{metaQueueName: name},
		}
		firstTry := time.Now()
		err = retrying(ctx, func(ctx context.Context) (err error) {
			st, err = q.js.CreateStream(ctx, cfg)
			if storeNotMade(err) && time.Since(firstTry) < storeRetryFor {
				// A stream of this name deleted a moment before may still
				// be leaving its files: the store is made on a next try.
				// (Not for long: the same answer covers a full disk.)
				err = errStoreNotMade{err}
			}
			if noPeersYet(err) {
				// Too few nodes seen up for its replicas: in a cluster
				// that has just formed, the others for a moment (CI
				// failed on a put right after every node listened).
				err = errStoreNotMade{err}
			}
			return err
		})
		var notMade errStoreNotMade
		if errors.As(err, &notMade) {
			err = notMade.err
		}
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another gateway was first
			err = retrying(ctx, func(ctx context.Context) (err error) { st, err = q.js.Stream(ctx, streamName(name)); return err })
		}
	}
	if err == nil && q.cfg.Pack > 1 {
		st, err = q.withPackSubjects(ctx, st, subject(name))
	}
	if err != nil {
		return nil, q.engineErr("open queue "+name, err)
	}
	var cons jetstream.Consumer
	err = retrying(ctx, func(ctx context.Context) (err error) { cons, err = st.Consumer(ctx, consumerName); return err })
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		ccfg := jetstream.ConsumerConfig{
			Durable:       consumerName,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       q.cfg.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: -1,
			MaxWaiting:    4096,
			Replicas:      0, // as the stream
			// Tasks only: never the schedules of delayed tasks
			// (scheduling.go).
			FilterSubjects: taskSubjects(st.CachedInfo().Config.Subjects, subject(name)),
		}
		// Created, never updated: a gateway that made the consumer a
		// moment before may have changed it since (enableSchedules).
		err = retrying(ctx, func(ctx context.Context) (err error) { cons, err = st.CreateConsumer(ctx, ccfg); return err })
		if errors.Is(err, jetstream.ErrConsumerExists) {
			err = retrying(ctx, func(ctx context.Context) (err error) { cons, err = st.Consumer(ctx, consumerName); return err })
		}
	}
	if err == nil {
		cons, err = q.withTaskFilter(ctx, st, cons, subject(name))
	}
	if err != nil {
		return nil, q.engineErr("open queue "+name, err)
	}
	s = &stream{queue: name, subject: subject(name), st: st, cons: cons, ackWait: cons.CachedInfo().Config.AckWait,
		next: pullPrefix + streamName(name) + "." + consumerName}
	if s.ackWait <= 0 {
		s.ackWait = q.cfg.AckWait
	}
	if !q.openLevels(ctx, s) {
		s.levelsUnread.Store(true) // opened again by watchLevels
	}
	q.mu.Lock()
	if prev := q.known[name]; prev != nil {
		s = prev
	} else {
		s.local = q.locals[name]
		if s.local == nil {
			s.local = &local{}
			q.locals[name] = s.local
		}
		q.known[name] = s
		q.queueOf[streamName(name)] = name
		// As the consumer is: paused through another gateway before
		// this one opened the queue, its resume must wake the gets
		// here (pauseChanged). Unless this gateway learned a change
		// since the consumer was read.
		if s.local.pauseSeq == pauseSeq {
			s.local.setPaused(pausedByOperator(cons.CachedInfo()))
		}
	}
	q.mu.Unlock()
	return s, nil
}

// forget drops a queue from the cache, after its stream was deleted
// (here or through another gateway).
func (q *Queues) forget(name string) {
	q.mu.Lock()
	q.forgetLocked(name)
	q.mu.Unlock()
}

// forgetStream drops s from the cache if it is still the queue's entry:
// not a stream of the queue opened again meanwhile.
func (q *Queues) forgetStream(s *stream) {
	q.mu.Lock()
	if q.known[s.queue] == s {
		q.forgetLocked(s.queue)
	}
	q.mu.Unlock()
}

func (q *Queues) forgetLocked(name string) {
	delete(q.known, name)
	delete(q.queueOf, streamName(name))
}

// isGone reports whether err says the stream or its consumer no longer
// exists.
func isGone(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrConsumerDeleted)
}

func (q *Queues) engineErr(what string, err error) error {
	if q.closed.Load() || errors.Is(err, context.Canceled) && q.ctx.Err() != nil {
		return queue.ErrClosed
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		// Refused however often it is sent: not for a client to retry.
		return fmt.Errorf("%w: jetstream: %s: %w", queue.ErrBadArgument, what, err)
	}
	return fmt.Errorf("%w: jetstream: %s: %w", queue.ErrUnavailable, what, err)
}

func (q *Queues) counters(name string) *counters {
	c := q.stats[name]
	if c == nil {
		c = &counters{}
		q.stats[name] = c
	}
	return c
}
