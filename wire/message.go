package wire

import (
	"strconv"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Op names the operation of a request.
type Op uint8

// Operations a client may request. Their numbers are part of the protocol.
const (
	OpHello    Op = 1  // tell the master the client's role and name
	OpPut      Op = 2  // append Items to Queue
	OpGet      Op = 3  // take up to Max tasks from Queue, waiting up to Timeout
	OpAck      Op = 4  // finish leased tasks IDs
	OpNack     Op = 5  // fail leased task IDs[0] with Error
	OpExtend   Op = 6  // extend the lease of IDs by Lease
	OpComplete Op = 7  // ack tasks and publish their results
	OpStats    Op = 8  // statistics of Queue, or of every queue
	OpPeek     Op = 9  // the first Max ready tasks of Queue, left in place
	OpPurge    Op = 10 // drop the tasks of Queue not leased (in a cluster, leased ones too)
	OpDelete   Op = 11 // remove Queue and all in it
	OpQueues   Op = 12 // names of all queues
	OpClients  Op = 13 // connected clients
	OpPause    Op = 14 // stop handing out the tasks of Queue
	OpResume   Op = 15 // hand out the tasks of Queue again
	OpRequeue  Op = 16 // move dead tasks IDs (all if none) of Queue back to it
	OpDrop     Op = 17 // remove ready tasks IDs of Queue for good
	OpConfig   Op = 18 // set the retry policy of Queue (MaxAttempts, BackoffMin, BackoffMax)
	OpDelayed  Op = 19 // the first Max delayed tasks of Queue, by due time
	OpRunNow   Op = 20 // make the delayed tasks IDs (all if none) of Queue ready now
	OpRelease  Op = 21 // give back leased tasks IDs of Queue, not started: in front (see Client.Release)
	OpCancel   Op = 22 // end the wait of the call on stream IDs[0] of this connection (see Client.call)
)

var opNames = map[Op]string{
	OpHello: "hello", OpPut: "put", OpGet: "get", OpAck: "ack", OpNack: "nack",
	OpExtend: "extend", OpComplete: "complete", OpStats: "stats", OpPeek: "peek",
	OpPurge: "purge", OpDelete: "delete", OpQueues: "queues", OpClients: "clients",
	OpPause: "pause", OpResume: "resume", OpRequeue: "requeue", OpDrop: "drop",
	OpConfig: "config", OpDelayed: "delayed", OpRunNow: "run-now", OpRelease: "release",
	OpCancel: "cancel",
}

func (o Op) String() string {
	if s, ok := opNames[o]; ok {
		return s
	}
	return "op" + strconv.Itoa(int(o))
}

// Valid reports whether o is an operation of this protocol version.
func (o Op) Valid() bool { _, ok := opNames[o]; return ok }

// Request is every client message. Fields an operation does not use stay empty.
type Request struct {
	Op      Op                   `msgpack:"op"`
	Queue   string               `msgpack:"q,omitempty"`
	Items   []msgpack.RawMessage `msgpack:"items,omitempty"`    // put: msgpack-encoded payloads
	ReplyTo string               `msgpack:"reply_to,omitempty"` // put: queue for the tasks' results
	Max     int                  `msgpack:"max,omitempty"`      // get, peek: at most this many tasks
	Timeout time.Duration        `msgpack:"timeout,omitempty"`  // get: wait up to this long; put: wait for space
	Lease   time.Duration        `msgpack:"lease,omitempty"`    // get, extend: lease length; 0 = master default
	NoAck   bool                 `msgpack:"no_ack,omitempty"`   // get: take for good, no lease
	IDs     []uint64             `msgpack:"ids,omitempty"`      // ack, nack, extend
	Error   string               `msgpack:"err,omitempty"`      // nack: why the attempt failed
	Results []Completion         `msgpack:"results,omitempty"`  // complete
	// ResultQueue receives the results of completed tasks that have no ReplyTo of their own.
	ResultQueue string `msgpack:"result_q,omitempty"`
	Role        string `msgpack:"role,omitempty"` // hello: worker, producer, admin
	Name        string `msgpack:"name,omitempty"` // hello: e.g. host:pid
	// Put options, for every item of the put. Delay hides the tasks from
	// gets for that long, or At until then (a past At is now); Priority is
	// 0 (the default) to 9, higher first; Keys, one per item ("" for
	// none), make the put idempotent: an item whose key the queue saw
	// within the master's dedup window adds nothing and gets the first
	// task's ID.
	Delay    time.Duration `msgpack:"delay,omitempty"`
	At       time.Time     `msgpack:"at,omitempty"`
	Priority int           `msgpack:"pri,omitempty"`
	Keys     []string      `msgpack:"keys,omitempty"`
	// RequestID (put) makes the whole put idempotent instead: the same
	// put sent again with the same ID within the dedup window adds
	// nothing and gets the first send's IDs. One entry per put, where
	// Keys cost one per item. Not with Keys.
	RequestID string `msgpack:"rid,omitempty"`
	// Resent (put, with RequestID) says the put may have been sent
	// before, its answer lost: a gateway then stores it as that first
	// send did, whatever it would do with a new put (its pack size).
	Resent bool `msgpack:"resent,omitempty"`
	// RetryAfter (nack) is how long the task waits before its next
	// delivery, instead of its queue's backoff.
	RetryAfter time.Duration `msgpack:"retry_after,omitempty"`
	// NoRetry (nack) says the task would fail again however often it ran
	// (bad input): it goes to the dead-letter queue now, whatever
	// attempts it has left. An older master ignores it and retries.
	NoRetry bool `msgpack:"no_retry,omitempty"`
	// Tokens (extend) are the tokens of the deliveries of IDs, in the same
	// order, when another gateway handed them out (Task.Token).
	Tokens []string `msgpack:"toks,omitempty"`
	// Attempts (release) are the attempts of the deliveries of IDs, in
	// the same order (Task.Attempt), so that a release of a delivery that
	// has since been superseded changes nothing.
	Attempts []int `msgpack:"atts,omitempty"`
	// CancelTasks (delete; answered with Response.Count 1) also cancels the tasks put before the delete
	// that name the queue as their reply queue and have not been handed
	// out: the master drops them instead of handing them out, as no one
	// waits for their results any more (a map that ends, interrupted or
	// not, deletes its private reply queue so).
	CancelTasks bool `msgpack:"cancel_tasks,omitempty"`
	// Retry policy (config): 0 leaves the master's default; BackoffMin -1
	// means no backoff.
	MaxAttempts int           `msgpack:"max_attempts,omitempty"`
	BackoffMin  time.Duration `msgpack:"backoff_min,omitempty"`
	BackoffMax  time.Duration `msgpack:"backoff_max,omitempty"`
	// Then is a second request that the master runs in the same call if
	// this one succeeds, answered in Response.Then: a worker's complete and
	// its next get, or a producer's put and the get of its results, in one
	// round trip instead of two. A Then may not have a Then of its own.
	Then *Request `msgpack:"then,omitempty"`
}

// Completion is the outcome of one task, sent by a worker in OpComplete.
type Completion struct {
	ID    uint64             `msgpack:"id"`
	Value msgpack.RawMessage `msgpack:"value,omitempty"`
	Error string             `msgpack:"err,omitempty"` // non-empty: the attempt failed (a nack)
	// RetryAfter, with an Error, is how long the task waits before its
	// next delivery, instead of its queue's backoff.
	RetryAfter time.Duration `msgpack:"retry_after,omitempty"`
	// NoRetry, with an Error, sends the task to the dead-letter queue now,
	// whatever attempts it has left (see Request.NoRetry).
	NoRetry bool `msgpack:"no_retry,omitempty"`
	// Token is the Token of the task's delivery, when it had one: it lets
	// another gateway than the one that handed the task out complete it
	// (see Task.Token).
	Token string `msgpack:"tok,omitempty"`
}

// Response is every master message.
type Response struct {
	Code    Code          `msgpack:"code,omitempty"`
	Error   string        `msgpack:"err,omitempty"`
	IDs     []uint64      `msgpack:"ids,omitempty"`
	Tasks   []Task        `msgpack:"tasks,omitempty"`
	Stats   []QueueStats  `msgpack:"stats,omitempty"`
	Clients []ClientInfo  `msgpack:"clients,omitempty"`
	Queues  []string      `msgpack:"queues,omitempty"`
	Count   int           `msgpack:"count,omitempty"`
	Lease   time.Duration `msgpack:"lease,omitempty"` // get: the lease granted
	// ClientID is the master's name for this client (hello).
	ClientID uint64 `msgpack:"client_id,omitempty"`
	// MaxMessageSize is the master's limit on one message (hello): a
	// client sends nothing larger, and says so at once.
	MaxMessageSize int `msgpack:"max_msg,omitempty"`
	// QueuesOutlive says that the master's queues outlive it (hello): it
	// keeps them in a data directory or a cluster, so a client that
	// loses it may connect again, to it restarted or to another gateway,
	// and find its tasks there.
	QueuesOutlive bool `msgpack:"outlive,omitempty"`
	// NoAdmin says that the client's key may not make the operators'
	// calls (hello; the ACL may change later): a client that only wants
	// to say more (map's notes) need not ask, and be counted as denied.
	NoAdmin bool `msgpack:"no_admin,omitempty"`
	// MaxStreams is how many streams the master takes open at once on one
	// connection (hello): a client keeps its calls and idle streams
	// within it.
	MaxStreams int `msgpack:"max_streams,omitempty"`
	// StreamClosed says that the master closes the stream after this
	// response, so the client must not reuse it.
	StreamClosed bool `msgpack:"stream_closed,omitempty"`
	// Note says why an answer is partial: the clients of this gateway
	// alone, when the cluster's other gateways could not be asked.
	Note string `msgpack:"note,omitempty"`
	// Repeats is how many items of a put were not stored again because
	// an item of the same idempotency key was stored within the dedup
	// window (put): their IDs are the first items'.
	Repeats int `msgpack:"repeats,omitempty"`
	// Then answers Request.Then; nil if it did not run because this
	// request failed.
	Then *Response `msgpack:"then,omitempty"`
}

// Task is a task as handed out by the master.
type Task struct {
	ID        uint64             `msgpack:"id"`
	Queue     string             `msgpack:"q"`
	Payload   msgpack.RawMessage `msgpack:"payload"`
	ReplyTo   string             `msgpack:"reply_to,omitempty"`
	Attempt   int                `msgpack:"attempt"`
	LastError string             `msgpack:"last_err,omitempty"`
	Enqueued  time.Time          `msgpack:"enqueued"`
	Priority  int                `msgpack:"pri,omitempty"`
	// Due is when a delayed task becomes ready (OpDelayed); zero otherwise.
	Due time.Time `msgpack:"due,omitempty"`
	// Lease is how long the master leased the task for, counted from the
	// get; zero for a task taken with NoAck or peeked.
	Lease time.Duration `msgpack:"-"`
	// Token names this delivery of the task to a gateway of a cluster
	// (qmaster --nats or --cluster-*); a single master sets none. A worker
	// whose gateway died completes the task through another by sending
	// the token back with its Completion, within the lease; a delivery
	// since superseded is refused as not leased, as on a single master.
	// It is opaque to clients.
	Token string `msgpack:"tok,omitempty"`
}

// Result is the payload the master publishes to a result queue for each
// finished task: its value, or the error that ended it for good.
type Result struct {
	TaskID  uint64             `msgpack:"task_id" json:"task_id"`
	Worker  string             `msgpack:"worker" json:"worker"`
	Attempt int                `msgpack:"attempt" json:"attempt"`
	Value   msgpack.RawMessage `msgpack:"value" json:"-"`
	Error   string             `msgpack:"error,omitempty" json:"error,omitempty"`
}

// QueueStats describes one queue.
type QueueStats struct {
	Queue     string        `msgpack:"queue" json:"queue"`
	Ready     int           `msgpack:"ready" json:"ready"`
	Leased    int           `msgpack:"leased" json:"leased"`
	Done      uint64        `msgpack:"done" json:"done"`
	Dead      int           `msgpack:"dead" json:"dead"`
	Consumers int           `msgpack:"consumers" json:"consumers"`
	OldestAge time.Duration `msgpack:"oldest_age" json:"oldest_ready_age_ns"`
	MaxLen    int           `msgpack:"max_len,omitempty" json:"max_len,omitempty"`
	Puts      uint64        `msgpack:"puts" json:"puts"`
	Gets      uint64        `msgpack:"gets" json:"gets"`
	Acks      uint64        `msgpack:"acks" json:"acks"`
	Nacks     uint64        `msgpack:"nacks" json:"nacks"`
	Expired   uint64        `msgpack:"expired" json:"expired"`
	// Disconnected counts the leases that ended as their worker
	// disconnected: failed attempts, as Nacks and Expired count.
	Disconnected uint64 `msgpack:"disconnected,omitempty" json:"disconnected"`
	// Paused is set while the queue hands out no task (OpPause).
	Paused bool `msgpack:"paused,omitempty" json:"paused,omitempty"`
	// Delayed counts the tasks not yet due: delayed puts and, of them,
	// Retrying, failed tasks waiting out their backoff; NextDue is when
	// the first is due.
	Delayed  int       `msgpack:"delayed,omitempty" json:"delayed"`
	Retrying int       `msgpack:"retrying,omitempty" json:"retrying"`
	NextDue  time.Time `msgpack:"next_due,omitempty" json:"next_due,omitzero"`
	// The retry policy in effect.
	MaxAttempts int           `msgpack:"max_attempts,omitempty" json:"max_attempts"`
	BackoffMin  time.Duration `msgpack:"backoff_min,omitempty" json:"backoff_min_ns"`
	BackoffMax  time.Duration `msgpack:"backoff_max,omitempty" json:"backoff_max_ns"`
	// Unread says the queue's figures could not be read in time (a
	// gateway whose JetStream is slow to answer): only Queue is set.
	Unread bool `msgpack:"unread,omitempty" json:"unread,omitempty"`
}

// ClientInfo describes one connected client.
type ClientInfo struct {
	ID   uint64 `msgpack:"id" json:"id"`
	Addr string `msgpack:"addr" json:"addr"`
	Role string `msgpack:"role" json:"role"`
	Name string `msgpack:"name" json:"name"`
	// Key is the name of the key the client authenticated with (qmaster
	// --acl; "authkey" with one --authkey), empty without authentication.
	Key string `msgpack:"key,omitempty" json:"key,omitempty"`
	// Gateway is the gateway of a cluster the client is connected to
	// (its host:port), in a list of every gateway's clients; empty from a
	// master that is no gateway.
	Gateway  string    `msgpack:"gateway,omitempty" json:"gateway,omitempty"`
	InFlight int       `msgpack:"in_flight" json:"in_flight"`
	LastSeen time.Time `msgpack:"last_seen" json:"last_seen"`
	Since    time.Time `msgpack:"since" json:"connected_since"`
}
