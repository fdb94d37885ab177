package pymanager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// A Python client of multiprocessing.managers.BaseManager opens one
// connection per server-level call (dummy, create, incref, decref) and
// one per thread for its proxies' method calls (after accept_connection).
// Queue objects are named by identPrefix + queue name, so any connection
// may call any queue's methods and no table is kept.

// identPrefix starts the object id of every queue given to Python.
const identPrefix = "qm-queue:"

// joinPoll is how often a Python join() looks whether its queue is done;
// joinPollCluster, through a gateway of a cluster, where each look asks
// every gateway.
const (
	joinPoll        = 20 * time.Millisecond
	joinPollCluster = 250 * time.Millisecond
)

// queueMethods are the methods of a queue proxy, as a Python manager
// exposes those of queue.Queue.
// put_with is qm's own: a put with a delay, a time, a priority or an
// idempotency key, which queue.Queue has no way to say.
var queueMethods = []string{"empty", "full", "get", "get_nowait", "join", "put", "put_nowait", "put_with", "qsize", "task_done"}

// serverMethods are the calls to the manager itself that serverCall
// answers.
var serverMethods = []string{"accept_connection", "create", "debug_info", "decref", "dummy", "incref", "number_of_objects", "shutdown"}

// Methods returns every method a Python client may call here, the queue
// proxies' and the manager's own, for per-method metrics.
func Methods() []string { return append(slices.Clone(queueMethods), serverMethods...) }

// conn is the state of one Python connection.
type conn struct {
	s   *Server
	c   Client
	log *slog.Logger
	// ctx ends when the client leaves (its connection reads EOF) or the
	// connection is closed, so that a blocked get stops waiting.
	ctx context.Context
	// name is the client's process name, once accept_connection gave it.
	name string
	// held are the tasks with a ReplyTo that gets delivered and no put
	// answered yet, in the order they came: see results.go.
	held []heldTask
	// passedOn says that a put went elsewhere since the held tasks came:
	// the next get forgets them (results.go).
	passedOn bool
}

// reply is the reply to one request. after, if set, runs once the reply
// is written (delivered) or failed to be.
type reply struct {
	msg   []byte
	after func(delivered bool)
	// method is the request's method, for the latency histogram; empty
	// for a request that could not be decoded.
	method string
}

// handle answers one request.
func (p *conn) handle(msg []byte) reply {
	req, err := pyproto.DecodeRequest(msg)
	if err != nil {
		if errors.Is(err, pyproto.ErrUnsafePickle) {
			p.log.Warn("python client: refused a pickle that would run code", "err", err)
		} else {
			p.log.Warn("python client: bad request", "err", err)
		}
		return traceback("", "TypeError", "request refused: "+err.Error())
	}
	r := p.dispatch(req)
	r.method = req.Method
	return r
}

// dispatch answers a decoded request.
func (p *conn) dispatch(req *pyproto.Request) reply {
	if p.s.cfg.Backend.Closing() {
		return traceback(req.Method, "RuntimeError", wire.ErrShuttingDown.Error())
	}
	if req.Ident == nil {
		return p.serverCall(req)
	}
	ident, _ := req.Ident.(string)
	name, ok := strings.CutPrefix(ident, identPrefix)
	if !ok || queue.CheckName(name) != nil {
		return traceback(req.Method, "KeyError", fmt.Sprintf("%s (no such object on this qm master)", repr(req.Ident)))
	}
	return p.queueCall(name, req)
}

// serverCall answers a call to the manager itself.
func (p *conn) serverCall(req *pyproto.Request) reply {
	p.log.Debug("python manager call", "method", req.Method)
	switch req.Method {
	case "dummy", "incref", "decref":
		return p.ret(nil)
	case "create":
		if len(req.Args) == 0 {
			return traceback(req.Method, "TypeError", "create() missing required argument: 'typeid'")
		}
		typeid, _ := req.Args[0].(string)
		name, ok := p.s.queueName(typeid)
		if !ok {
			p.log.Info("python client asked for an unknown typeid", "typeid", typeid)
			return traceback(req.Method, "KeyError", fmt.Sprintf(
				"%s (qm master: no queue for this typeid; use get_<queue>_queue, or map it with qmaster --py-typeid TYPEID=QUEUE)",
				repr(req.Args[0])))
		}
		// A worker whose key may not put to the results queue still
		// needs its proxy: its puts there are its tasks' results.
		if name != p.s.cfg.ResultsQueue {
			if r, denied := p.authorize(req.Method, acl.Use, name); denied {
				return r
			}
		}
		// Create the queue now, as a Python manager creates its object.
		if _, err := p.s.cfg.Backend.Put(p.ctx, queue.PutRequest{Queue: name}); err != nil {
			return p.queueError(req.Method, err)
		}
		methods := make(pyproto.Tuple, len(queueMethods))
		for i, m := range queueMethods {
			methods[i] = m
		}
		return p.ret(pyproto.Tuple{identPrefix + name, methods})
	case "accept_connection":
		name := "python"
		if len(req.Args) > 0 {
			if s, ok := req.Args[0].(string); ok && s != "" {
				name = s
			}
		}
		p.name = name
		p.c.Identify(name)
		p.log.Debug("python client connected", "name", name)
		return p.ret(nil)
	case "number_of_objects":
		return p.ret(int64(0))
	case "debug_info":
		return p.ret("qm master: queues are named objects; no per-client objects are kept\n")
	case "shutdown":
		return traceback(req.Method, "RuntimeError", "a qm master is not shut down by its clients")
	}
	return traceback(req.Method, "AssertionError", fmt.Sprintf("%s unrecognized", repr(req.Method)))
}

// authorize checks the client's permission to do perm to queue, and
// makes the reply that raises the denial in the client:
// PermissionError, with the text a native client gets.
func (p *conn) authorize(method string, perm acl.Perm, queue string) (reply, bool) {
	if err := p.c.Authorize(method, perm, queue); err != nil {
		return traceback(method, "PermissionError", err.Error()), true
	}
	return reply{}, false
}

// queuePerms are the permissions each queue method needs; put's is
// Put, unless the put is a result (put, in results.go).
var queuePerms = map[string]acl.Perm{
	"get": acl.Get, "get_nowait": acl.Get,
	"qsize": acl.Use, "empty": acl.Use, "full": acl.Use, "task_done": acl.Use, "join": acl.Use,
}

// queueCall answers a call to a queue proxy's method.
func (p *conn) queueCall(name string, req *pyproto.Request) reply {
	if perm, ok := queuePerms[req.Method]; ok {
		if r, denied := p.authorize(req.Method, perm, name); denied {
			return r
		}
	}
	var (
		args *pyproto.Params
		err  error
	)
	bind := func(names []string, defaults ...any) bool {
		args, err = req.Bind(names, defaults)
		return err == nil
	}
	switch req.Method {
	case "put":
		if !bind([]string{"item", "block", "timeout"}, pyproto.Required, true, nil) {
			break
		}
		return p.put(req.Method, name, args.Value(0), args.Truth(1), args, 2, queue.Item{})
	case "put_nowait":
		if !bind([]string{"item"}, pyproto.Required) {
			break
		}
		return p.put(req.Method, name, args.Value(0), false, nil, 0, queue.Item{})
	case "put_with":
		if !bind([]string{"item", "delay", "at", "priority", "key", "block", "timeout", "reply_to"},
			pyproto.Required, nil, nil, int64(0), nil, true, nil, nil) {
			break
		}
		sched, err := scheduleArgs(args, 1)
		if err != nil {
			return p.errorReply(pyproto.ValueError(err.Error()))
		}
		switch rt := args.Value(7).(type) {
		case nil:
		case string:
			// Else the task would run and its result go nowhere.
			if err := queue.CheckName(rt); err != nil {
				return p.errorReply(pyproto.ValueError("reply_to: " + err.Error()))
			}
			if err := p.c.AuthorizeReplyTo(req.Method, rt); err != nil {
				return traceback(req.Method, "PermissionError", err.Error())
			}
			sched.ReplyTo = rt
		default:
			return p.errorReply(pyproto.ValueError("reply_to must be a str, not " + pyproto.TypeName(rt)))
		}
		return p.put(req.Method, name, args.Value(0), args.Truth(5), args, 6, sched)
	case "get":
		if !bind([]string{"block", "timeout"}, true, nil) {
			break
		}
		return p.get(req.Method, name, args.Truth(0), args, 1)
	case "get_nowait":
		if !bind(nil) {
			break
		}
		return p.get(req.Method, name, false, nil, 0)
	case "qsize", "empty", "full":
		if !bind(nil) {
			break
		}
		st, err := p.s.cfg.Backend.Stats(name)
		if err != nil && !errors.Is(err, queue.ErrUnknownQueue) {
			return p.queueError(req.Method, err)
		}
		switch req.Method {
		case "qsize":
			return p.ret(int64(st.Ready))
		case "empty":
			return p.ret(st.Ready == 0)
		}
		return p.ret(st.MaxLen > 0 && st.Ready+st.Delayed+st.Leased >= st.MaxLen)
	case "task_done":
		if !bind(nil) {
			break
		}
		if err := p.s.taskDone(name); err != nil {
			if errors.Is(err, errTooMany) {
				return p.errorReply(pyproto.ValueError(err.Error()))
			}
			return p.queueError(req.Method, err)
		}
		return p.ret(nil)
	case "join":
		if !bind(nil) {
			break
		}
		return p.join(name)
	case "__repr__", "__str__":
		return p.ret(fmt.Sprintf("<qm queue %q>", name))
	default:
		return traceback(req.Method, "AttributeError", fmt.Sprintf("method %s of qm queue %q is not exposed", repr(req.Method), name))
	}
	return traceback(req.Method, "TypeError", err.Error())
}

// wait says how a call may wait, from its block and timeout parameters
// (parameter i of args): under ctx, for at most maxWait (0: as long as
// the client stays), or not at all (queue.NoWait).
func (p *conn) wait(block bool, args *pyproto.Params, i int) (ctx context.Context, maxWait time.Duration, err error) {
	if !block {
		return queue.NoWait, 0, nil
	}
	if args != nil {
		d, ok, err := args.Timeout(i)
		if err != nil {
			return nil, 0, err
		}
		if ok && d <= 0 {
			return queue.NoWait, 0, nil
		}
		if ok {
			return p.ctx, d, nil
		}
	}
	return p.ctx, 0, nil
}

// scheduleArgs reads put_with's delay, at, priority and key, parameters
// i to i+3: seconds from now, a Unix time in seconds, 0 to 9, a string.
func scheduleArgs(args *pyproto.Params, i int) (queue.Item, error) {
	var it queue.Item
	delay, hasDelay, err := args.Timeout(i)
	switch {
	case err != nil:
		return it, fmt.Errorf("delay must be a number of seconds >= 0, got %v", args.Value(i))
	case !hasDelay && args.Value(i) != nil:
		return it, fmt.Errorf("delay of %v seconds is too far ahead", args.Value(i))
	}
	var at float64
	switch x := args.Value(i + 1).(type) {
	case nil:
	case int64:
		at = float64(x)
	case float64:
		at = x
	default:
		return it, fmt.Errorf("at must be a Unix time in seconds (time.time()), not %s", pyproto.TypeName(x))
	}
	if math.IsNaN(at) || math.Abs(at) > 1e11 {
		return it, fmt.Errorf("at must be a Unix time in seconds (time.time()), got %v", at)
	}
	switch {
	case hasDelay && at != 0:
		return it, errors.New("give delay or at, not both")
	case hasDelay:
		it.Due = time.Now().Add(delay)
	case at != 0:
		sec := math.Floor(at)
		it.Due = time.Unix(int64(sec), int64((at-sec)*1e9)) // a past time runs now
	}
	pri, ok := args.Value(i + 2).(int64)
	if !ok {
		return it, fmt.Errorf("priority must be an int, not %s", pyproto.TypeName(args.Value(i+2)))
	}
	it.Priority = int(max(min(pri, math.MaxInt32), math.MinInt32)) // the range is CheckItems's to refuse
	switch k := args.Value(i + 3).(type) {
	case nil:
	case string:
		it.Key = k
	default:
		return it, fmt.Errorf("key must be a str, not %s", pyproto.TypeName(k))
	}
	// The bounds are the queues' own: refused here, as a ValueError, with
	// their words.
	if err := queue.CheckItems([]queue.Item{it}, time.Now()); err != nil {
		return it, err
	}
	return it, nil
}

// put puts item, with sched's due time, priority and key, for the
// proxy's method (put, put_nowait or put_with), which its errors name.
func (p *conn) put(method, name string, item any, block bool, args *pyproto.Params, timeoutArg int, sched queue.Item) reply {
	payload, err := pyproto.ToMsgpack(item, p.s.cfg.MaxMessageSize)
	if err != nil {
		return traceback(method, "TypeError", "value refused: "+err.Error())
	}
	if t, ok := p.resultOf(name); ok {
		// A result goes to the reply queue of a task this client got,
		// which its key need not be allowed to put to.
		if err := p.publishResult(t, payload); err != nil {
			// Not queued: the script's put again is the task's result
			// still, not an ordinary item.
			p.held = slices.Insert(p.held, 0, t)
			return p.queueError(method, err)
		}
		return p.ret(nil)
	}
	if r, denied := p.authorize(method, acl.Put, name); denied {
		return r
	}
	if err := p.s.cfg.Backend.AdmitPut(); err != nil {
		return p.queueError(method, err)
	}
	ctx, maxWait, err := p.wait(block, args, timeoutArg)
	if err != nil {
		return p.errorReply(pyproto.ValueError(err.Error()))
	}
	sched.Payload = payload
	ids, err := p.s.cfg.Backend.Put(ctx, queue.PutRequest{Queue: name, Items: []queue.Item{sched}, MaxWait: maxWait})
	if err != nil {
		if errors.Is(err, queue.ErrQueueFull) && p.ctx.Err() == nil {
			return p.errorReply(pyproto.Full)
		}
		return p.queueError(method, err)
	}
	if method == "put_with" && len(ids) == 1 {
		// qm's own method answers the task's ID (a repeated key's: the
		// first put's task), as a Celery producer's AsyncResult.id; put
		// answers None, as Queue.put does.
		return p.ret(int64(ids[0]))
	}
	return p.ret(nil)
}

// get takes one task for good. It is leased while its reply is written
// and acked once it is, so that a task whose payload Python cannot read
// fails an attempt (and is dead-lettered in the end) rather than being
// lost, and a task whose reply could not be written goes back.
func (p *conn) get(method, name string, block bool, args *pyproto.Params, timeoutArg int) reply {
	ctx, maxWait, err := p.wait(block, args, timeoutArg)
	if err != nil {
		return p.errorReply(pyproto.ValueError(err.Error()))
	}
	q := p.s.cfg.Backend
	req := queue.GetRequest{Queue: name, Max: 1, Owner: p.c.ID(), MaxWait: maxWait}
	ts, err := q.Get(ctx, req, nil)
	if err != nil {
		return p.queueError(method, err)
	}
	if len(ts) == 0 {
		if p.ctx.Err() != nil {
			// The client left (no one reads the reply) or the master stops.
			return traceback(method, "RuntimeError", wire.ErrShuttingDown.Error())
		}
		return p.errorReply(pyproto.Empty)
	}
	if r, denied := p.authorize(method, acl.Get, name); denied {
		// The ACL was reloaded while the get waited: the task goes only
		// to a key that may still take it.
		q.Unget(req, ts)
		return r
	}
	t := ts[0]
	reply, failure := p.taskReply(t)
	if failure != "" {
		if err := q.Nack(queue.NackRequest{Queue: name, Owner: p.c.ID(), ID: t.ID, Error: failure}); err != nil {
			p.log.Warn("python get: nack", "queue", name, "task", t.ID, "err", err)
		}
		p.log.Warn("python get: task not delivered", "queue", name, "task", t.ID, "err", failure)
		return traceback(method, "TypeError", fmt.Sprintf("qm master: task %d of queue %q: %s", t.ID, name, failure))
	}
	reply.after = func(delivered bool) {
		if !delivered {
			q.Unget(req, ts)
			return
		}
		if _, err := q.Ack(queue.AckRequest{Queue: name, Owner: p.c.ID(), IDs: []uint64{t.ID}}, nil); err != nil {
			p.log.Warn("python get: ack", "queue", name, "task", t.ID, "err", err)
		}
		p.s.tookTasks(name, 1)
		p.took(name, t)
	}
	return reply
}

// taskReply pickles the reply that delivers t, or says why it cannot. A
// payload shaped exactly like a wire.Result (as qworker publishes) is
// given as its value; a failed result is raised as a RemoteError.
func (p *conn) taskReply(t queue.Task) (reply, string) {
	payload := t.Payload
	if len(payload) == 0 {
		payload = msgp.AppendNil(nil) // a native client's nil arrives empty
	}
	if f, ok := pyproto.MapFields(payload); ok && isResultShape(f) {
		if r, err := wire.DecodeResult(payload); err == nil {
			if r.Error != "" {
				return traceback("get", "RuntimeError", fmt.Sprintf("task %d failed (worker %s, attempt %d): %s", r.TaskID, r.Worker, r.Attempt, r.Error)), ""
			}
			payload = f["value"]
		}
	}
	msg, err := pyproto.Reply(pyproto.KindReturn, pyproto.Msgpack(payload))
	if err != nil {
		return reply{}, "payload cannot be given to Python: " + err.Error()
	}
	if len(msg) > p.s.cfg.MaxMessageSize {
		return reply{}, fmt.Sprintf("payload of %d bytes as a pickle exceeds the maximum message size", len(msg))
	}
	return reply{msg: msg}, ""
}

// isResultShape reports whether a map's keys are exactly those of a
// wire.Result: task_id, worker, attempt, value and perhaps error.
func isResultShape(f map[string][]byte) bool {
	n := 4
	if _, ok := f["error"]; ok {
		n = 5
	}
	for _, k := range []string{"task_id", "worker", "attempt", "value"} {
		if _, ok := f[k]; !ok {
			return false
		}
	}
	return len(f) == n
}

// join waits until the queue holds no ready, delayed or leased task and every task
// Python clients took from it was marked task_done: through every gateway
// of a cluster, which it asks less often, and waits through a cluster's
// moments without a leader.
func (p *conn) join(name string) reply {
	every := joinPoll
	if p.s.cfg.Cluster != nil {
		every = joinPollCluster
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		done, err := p.joined(name)
		switch {
		case err != nil && !errors.Is(err, queue.ErrUnavailable):
			return p.queueError("join", err)
		case done:
			return p.ret(nil)
		}
		select {
		case <-p.ctx.Done():
			return traceback("join", "RuntimeError", wire.ErrShuttingDown.Error())
		case <-tick.C:
		}
	}
}

// joined reports whether a join() of queue name would return now.
func (p *conn) joined(name string) (bool, error) {
	st, err := p.s.cfg.Backend.Stats(name)
	if err != nil && !errors.Is(err, queue.ErrUnknownQueue) {
		return false, err
	}
	if st.Ready+st.Delayed+st.Leased > 0 {
		return false, nil
	}
	n, err := p.s.unfinishedEverywhere(name)
	return n == 0 && err == nil, err
}

func (p *conn) ret(v any) reply {
	msg, err := pyproto.Reply(pyproto.KindReturn, v)
	if err != nil { // a bug: every value returned here pickles
		return traceback("", "RuntimeError", "qm master: "+err.Error())
	}
	return reply{msg: msg}
}

// errorReply raises exc in the client, as a Python manager does for an
// exception of the object's method.
func (p *conn) errorReply(exc pyproto.Exception) reply {
	msg, err := pyproto.Reply(pyproto.KindError, exc)
	if err != nil {
		return traceback("", exc.Name, fmt.Sprint(exc.Args...))
	}
	return reply{msg: msg}
}

// traceback makes the client raise multiprocessing.managers.RemoteError
// with a text in the form of a Python traceback, as a Python manager
// replies to an error outside the object's method.
func traceback(method, excType, text string) reply {
	where := "qm master"
	if method != "" {
		where += ", serving " + method + "()"
	}
	// A tuple of two strings always pickles.
	msg, _ := pyproto.Reply(pyproto.KindTraceback,
		fmt.Sprintf("Traceback (most recent call last):\n  %s\n%s: %s\n", where, excType, text))
	return reply{msg: msg}
}

// queueError reports an error of the queue manager.
func (p *conn) queueError(method string, err error) reply {
	if errors.Is(err, queue.ErrClosed) || p.ctx.Err() != nil {
		return traceback(method, "RuntimeError", wire.ErrShuttingDown.Error())
	}
	return traceback(method, "ValueError", "qm master: "+err.Error())
}

// pyRepr renders a short value as Python's repr would, near enough.
func repr(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 100 {
			x = x[:100] + "..."
		}
		return "'" + strings.ReplaceAll(strings.ReplaceAll(x, `\`, `\\`), "'", `\'`) + "'"
	case nil:
		return "None"
	}
	return pyproto.TypeName(v) + " value"
}

// ClassicTypeIDs are the typeids of the classic distributed-queue
// scripts. They serve qm's default queues, where qworker takes tasks and
// puts results and where qmaster map puts tasks, so that those scripts
// and qm's commands meet with no flags.
var ClassicTypeIDs = map[string]string{"get_task_queue": wire.DefaultTaskQueue, "get_result_queue": wire.DefaultResultQueue}

// queueName maps a typeid to its queue: a --py-typeid entry, a classic
// typeid, or the name inside get_<name>_queue.
func (s *Server) queueName(typeid string) (string, bool) {
	if q, ok := s.cfg.TypeIDs[typeid]; ok {
		return q, true
	}
	if q, ok := ClassicTypeIDs[typeid]; ok {
		return q, true
	}
	name, ok := strings.CutPrefix(typeid, "get_")
	if !ok {
		return "", false
	}
	name, ok = strings.CutSuffix(name, "_queue")
	if !ok || queue.CheckName(name) != nil {
		return "", false
	}
	return name, true
}
