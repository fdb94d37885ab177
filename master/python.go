package master

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// A Python client of multiprocessing.managers.BaseManager opens one
// connection per server-level call (dummy, create, incref, decref) and
// one per thread for its proxies' method calls (after accept_connection).
// Each connection is served here, one request and one reply at a time.
// Queue objects are named by pyIdentPrefix + queue name, so any
// connection may call any queue's methods and no table is kept.

// pyIdentPrefix starts the object id of every queue given to Python.
const pyIdentPrefix = "qm-queue:"

// pyRole is the role of a Python client in the client list.
const pyRole = "python"

// pyJoinPoll is how often a Python join() looks whether its queue is done.
const pyJoinPoll = 20 * time.Millisecond

// pyQueueMethods are the methods of a queue proxy, as a Python manager
// exposes those of queue.Queue.
var pyQueueMethods = []string{"empty", "full", "get", "get_nowait", "join", "put", "put_nowait", "qsize", "task_done"}

// pyServerMethods are the calls to the manager itself that serverCall
// answers.
var pyServerMethods = []string{"accept_connection", "create", "debug_info", "decref", "dummy", "incref", "number_of_objects", "shutdown"}

// pyShared is the state Python connections share: the tasks taken by
// Python gets and not yet marked task_done, per queue, for join().
type pyShared struct {
	mu         sync.Mutex
	unfinished map[string]int
}

func (s *pyShared) add(q string, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unfinished == nil {
		s.unfinished = make(map[string]int)
	}
	if s.unfinished[q]+n < 0 {
		return errors.New("task_done() called too many times")
	}
	s.unfinished[q] += n
	if s.unfinished[q] == 0 {
		delete(s.unfinished, q)
	}
	return nil
}

func (s *pyShared) pending(q string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unfinished[q]
}

// pyConn is the state of one Python connection.
type pyConn struct {
	c   *clientConn
	log *slog.Logger
	// ctx ends when the client leaves (its connection reads EOF) or the
	// connection is closed, so that a blocked get stops waiting.
	ctx context.Context
	// last is the task the last get delivered, if it has a ReplyTo: the
	// next put to another queue is its result.
	last *pyTask
}

type pyTask struct {
	id      uint64
	attempt int
	from    string
	replyTo string
}

// pyFrame is one frame read from a Python client, or the error that ended
// reading.
type pyFrame struct {
	msg []byte
	err error
}

// pyReply is the reply to one request. after, if set, runs once the reply
// is written (delivered) or failed to be.
type pyReply struct {
	msg   []byte
	after func(delivered bool)
	// method is the request's method, for the latency histogram; empty
	// for a request that could not be decoded.
	method string
}

// servePython serves a client that speaks Python's BaseManager protocol.
// first holds the 4-byte length header of its first frame.
func (c *clientConn) servePython(first []byte) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	p := &pyConn{c: c, log: c.s.log.With("remote", c.addr, "client", c.id), ctx: ctx}
	frames := make(chan pyFrame)
	readDone := make(chan struct{})
	if !c.s.goRun(func() { defer close(readDone); p.read(first, frames, cancel) }) {
		return
	}
	defer func() {
		c.close() // ends the reader
		<-readDone
		if n := c.s.queues.Release(c.id); n > 0 {
			p.log.Info("python client gone; its leased tasks requeued", "tasks", n)
		}
		if c.roleName() == pyRole {
			p.log.Debug("python client disconnected")
		}
	}()
	for f := range frames {
		if f.err != nil {
			p.readFailed(f.err)
			return
		}
		c.active.Add(1)
		start := time.Now()
		c.lastSeen.Store(start.UnixNano())
		r := p.handle(f.msg)
		err := auth.WriteMessage(c.conn, r.msg)
		if r.after != nil {
			r.after(err == nil)
		}
		c.s.metrics.observePython(r.method, start)
		c.active.Add(-1)
		if err != nil {
			p.log.Debug("python client: write failed", "err", err)
			return
		}
	}
}

// pyRefuseMaxRequest bounds the first request that refusePython reads
// and discards: a manager's first request on a connection (dummy, create,
// incref, decref, accept_connection) is a hundred bytes or so.
const pyRefuseMaxRequest = 64 << 10

// refusePython answers a Python client refused at MaxConns with a
// '#TRACEBACK' reply, which Python raises as RemoteError with its text,
// rather than closing on it with no word. header is the 4-byte length of
// the client's first request, already read. The request is read and
// discarded first, within the handshake deadline still set: closing a
// socket with unread data resets the connection, and the client could
// lose the reply. A request beyond pyRefuseMaxRequest, or not sent in
// time, gets no reply.
func (c *clientConn) refusePython(header []byte) {
	n := binary.BigEndian.Uint32(header)
	if n > pyRefuseMaxRequest {
		return
	}
	if _, err := io.CopyN(io.Discard, c.conn, int64(n)); err != nil {
		return
	}
	r := (&pyConn{c: c}).traceback("", "ConnectionRefusedError", fmt.Sprintf(
		"%v: too many connections (qmaster --max-conns %d); try again later", wire.ErrMasterFull, c.s.cfg.MaxConns))
	_ = auth.WriteMessage(c.conn, r.msg)
}

// read reads frames until the connection fails or ends, and hands them to
// the serving loop. The first frame must arrive within the handshake
// timeout. Once reading fails, cancel ends the calls the client waits on.
func (p *pyConn) read(first []byte, frames chan<- pyFrame, cancel context.CancelFunc) {
	defer close(frames)
	c := p.c
	_ = c.conn.SetReadDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	var r io.Reader = io.MultiReader(bytes.NewReader(first), c.conn)
	for n := 0; ; n++ {
		msg, err := auth.ReadMessage(r, c.s.cfg.MaxMessageSize)
		if n == 0 && err == nil {
			_ = c.conn.SetReadDeadline(time.Time{})
			r = c.conn
		}
		if err != nil {
			cancel()
		}
		select {
		case frames <- pyFrame{msg: msg, err: err}:
		case <-c.ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

func (p *pyConn) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	case errors.Is(err, auth.ErrMessageTooLarge):
		p.log.Warn("python client: message too large; connection closed", "err", err)
		r := p.traceback("", "ValueError", fmt.Sprintf("%v (the master's --max-message-size)", err))
		_ = p.c.conn.SetWriteDeadline(time.Now().Add(p.c.s.cfg.HandshakeTimeout))
		_ = auth.WriteMessage(p.c.conn, r.msg)
	case errors.As(err, &ne) && ne.Timeout():
		p.log.Warn("python client sent no request in time; connection closed")
	default:
		p.log.Debug("python client: read failed", "err", err)
	}
}

// handle answers one request.
func (p *pyConn) handle(msg []byte) pyReply {
	req, err := pyproto.DecodeRequest(msg)
	if err != nil {
		if errors.Is(err, pyproto.ErrUnsafePickle) {
			p.log.Warn("python client: refused a pickle that would run code", "err", err)
		} else {
			p.log.Warn("python client: bad request", "err", err)
		}
		return p.traceback("", "TypeError", "request refused: "+err.Error())
	}
	r := p.dispatch(req)
	r.method = req.Method
	return r
}

// dispatch answers a decoded request.
func (p *pyConn) dispatch(req *pyproto.Request) pyReply {
	if p.c.s.isClosing() {
		return p.traceback(req.Method, "RuntimeError", wire.ErrShuttingDown.Error())
	}
	if req.Ident == nil {
		return p.serverCall(req)
	}
	ident, _ := req.Ident.(string)
	name, ok := strings.CutPrefix(ident, pyIdentPrefix)
	if !ok || queue.CheckName(name) != nil {
		return p.traceback(req.Method, "KeyError", fmt.Sprintf("%s (no such object on this qm master)", pyRepr(req.Ident)))
	}
	return p.queueCall(name, req)
}

// serverCall answers a call to the manager itself.
func (p *pyConn) serverCall(req *pyproto.Request) pyReply {
	p.log.Debug("python manager call", "method", req.Method)
	switch req.Method {
	case "dummy", "incref", "decref":
		return p.ret(nil)
	case "create":
		if len(req.Args) == 0 {
			return p.traceback(req.Method, "TypeError", "create() missing required argument: 'typeid'")
		}
		typeid, _ := req.Args[0].(string)
		name, ok := p.c.s.pyQueueName(typeid)
		if !ok {
			p.log.Info("python client asked for an unknown typeid", "typeid", typeid)
			return p.traceback(req.Method, "KeyError", fmt.Sprintf(
				"%s (qm master: no queue for this typeid; use get_<queue>_queue, or map it with qmaster --py-typeid TYPEID=QUEUE)",
				pyRepr(req.Args[0])))
		}
		// Create the queue now, as a Python manager creates its object.
		if _, err := p.c.s.queues.Put(p.ctx, queue.PutRequest{Queue: name}); err != nil {
			return p.queueError(req.Method, err)
		}
		methods := make(pyproto.Tuple, len(pyQueueMethods))
		for i, m := range pyQueueMethods {
			methods[i] = m
		}
		return p.ret(pyproto.Tuple{pyIdentPrefix + name, methods})
	case "accept_connection":
		name := "python"
		if len(req.Args) > 0 {
			if s, ok := req.Args[0].(string); ok && s != "" {
				name = s
			}
		}
		p.c.setIdentity(pyRole, name)
		p.log.Debug("python client connected", "name", name)
		return p.ret(nil)
	case "number_of_objects":
		return p.ret(int64(0))
	case "debug_info":
		return p.ret("qm master: queues are named objects; no per-client objects are kept\n")
	case "shutdown":
		return p.traceback(req.Method, "RuntimeError", "a qm master is not shut down by its clients")
	}
	return p.traceback(req.Method, "AssertionError", fmt.Sprintf("%s unrecognized", pyRepr(req.Method)))
}

// pyQueueName maps a typeid to its queue: a --py-typeid entry, or the
// name inside get_<name>_queue.
func (s *Server) pyQueueName(typeid string) (string, bool) {
	if q, ok := s.cfg.PyTypeIDs[typeid]; ok {
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

// queueCall answers a call to a queue proxy's method.
func (p *pyConn) queueCall(name string, req *pyproto.Request) pyReply {
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
		return p.put(name, args.Value(0), args.Truth(1), args, 2)
	case "put_nowait":
		if !bind([]string{"item"}, pyproto.Required) {
			break
		}
		return p.put(name, args.Value(0), false, nil, 0)
	case "get":
		if !bind([]string{"block", "timeout"}, true, nil) {
			break
		}
		return p.get(name, args.Truth(0), args, 1)
	case "get_nowait":
		if !bind(nil) {
			break
		}
		return p.get(name, false, nil, 0)
	case "qsize", "empty", "full":
		if !bind(nil) {
			break
		}
		st, err := p.c.s.queues.Stats(name)
		if err != nil && !errors.Is(err, queue.ErrUnknownQueue) {
			return p.queueError(req.Method, err)
		}
		switch req.Method {
		case "qsize":
			return p.ret(int64(st.Ready))
		case "empty":
			return p.ret(st.Ready == 0)
		}
		return p.ret(st.MaxLen > 0 && st.Ready+st.Leased >= st.MaxLen)
	case "task_done":
		if !bind(nil) {
			break
		}
		if err := p.c.s.py.add(name, -1); err != nil {
			return p.errorReply(pyproto.ValueError(err.Error()))
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
		return p.traceback(req.Method, "AttributeError", fmt.Sprintf("method %s of qm queue %q is not exposed", pyRepr(req.Method), name))
	}
	return p.traceback(req.Method, "TypeError", err.Error())
}

// waitCtx returns the context of a blocking call: done at once if it may
// not block, else ending after the timeout parameter i of args, if any.
func (p *pyConn) waitCtx(block bool, args *pyproto.Params, i int) (context.Context, context.CancelFunc, error) {
	if !block {
		ctx, cancel := context.WithCancel(p.ctx)
		cancel()
		return ctx, cancel, nil
	}
	if args != nil {
		d, ok, err := args.Timeout(i)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			ctx, cancel := context.WithTimeout(p.ctx, d)
			return ctx, cancel, nil
		}
	}
	ctx, cancel := context.WithCancel(p.ctx)
	return ctx, cancel, nil
}

func (p *pyConn) put(name string, item any, block bool, args *pyproto.Params, timeoutArg int) pyReply {
	payload, err := pyproto.ToMsgpack(item, p.c.s.cfg.MaxMessageSize)
	if err != nil {
		return p.traceback("put", "TypeError", "value refused: "+err.Error())
	}
	if t := p.last; t != nil && t.from != name {
		// The result of the task this connection took last: it goes to
		// the queue its producer named.
		p.last = nil
		res, err := wire.Encode(wire.Result{TaskID: t.id, Worker: p.workerName(), Attempt: t.attempt, Value: payload})
		if err == nil {
			_, err = p.c.s.queues.Put(context.Background(), queue.PutRequest{Queue: t.replyTo, Items: []queue.Item{{Payload: res}}, Results: true})
		}
		if err != nil {
			return p.queueError("put", err)
		}
		return p.ret(nil)
	}
	if err := p.c.s.checkMemory(); err != nil {
		return p.queueError("put", err)
	}
	ctx, cancel, err := p.waitCtx(block, args, timeoutArg)
	if err != nil {
		return p.errorReply(pyproto.ValueError(err.Error()))
	}
	defer cancel()
	if _, err := p.c.s.queues.Put(ctx, queue.PutRequest{Queue: name, Items: []queue.Item{{Payload: payload}}}); err != nil {
		if errors.Is(err, queue.ErrQueueFull) && p.ctx.Err() == nil {
			return p.errorReply(pyproto.Full)
		}
		return p.queueError("put", err)
	}
	return p.ret(nil)
}

// get takes one task for good. It is leased while its reply is written
// and acked once it is, so that a task whose payload Python cannot read
// fails an attempt (and is dead-lettered in the end) rather than being
// lost, and a task whose reply could not be written goes back.
func (p *pyConn) get(name string, block bool, args *pyproto.Params, timeoutArg int) pyReply {
	ctx, cancel, err := p.waitCtx(block, args, timeoutArg)
	if err != nil {
		return p.errorReply(pyproto.ValueError(err.Error()))
	}
	defer cancel()
	q := p.c.s.queues
	req := queue.GetRequest{Queue: name, Max: 1, Owner: p.c.id}
	ts, err := q.Get(ctx, req, nil)
	if err != nil {
		return p.queueError("get", err)
	}
	if len(ts) == 0 {
		if p.ctx.Err() != nil {
			// The client left (no one reads the reply) or the master stops.
			return p.traceback("get", "RuntimeError", wire.ErrShuttingDown.Error())
		}
		return p.errorReply(pyproto.Empty)
	}
	t := ts[0]
	reply, failure := p.taskReply(t)
	if failure != "" {
		if err := q.Nack(name, p.c.id, t.ID, failure); err != nil {
			p.log.Warn("python get: nack", "queue", name, "task", t.ID, "err", err)
		}
		p.log.Warn("python get: task not delivered", "queue", name, "task", t.ID, "err", failure)
		return p.traceback("get", "TypeError", fmt.Sprintf("qm master: task %d of queue %q: %s", t.ID, name, failure))
	}
	reply.after = func(delivered bool) {
		if !delivered {
			q.Unget(req, ts)
			return
		}
		if _, err := q.Ack(queue.AckRequest{Queue: name, Owner: p.c.id, IDs: []uint64{t.ID}}, nil); err != nil {
			p.log.Warn("python get: ack", "queue", name, "task", t.ID, "err", err)
		}
		_ = p.c.s.py.add(name, 1)
		p.last = nil
		if t.ReplyTo != "" {
			p.last = &pyTask{id: t.ID, attempt: t.Attempts, from: name, replyTo: t.ReplyTo}
		}
	}
	return reply
}

// taskReply pickles the reply that delivers t, or says why it cannot. A
// payload shaped exactly like a wire.Result (as qworker publishes) is
// given as its value; a failed result is raised as a RemoteError.
func (p *pyConn) taskReply(t queue.Task) (pyReply, string) {
	payload := t.Payload
	if len(payload) == 0 {
		payload = []byte{0xc0} // a native client's nil arrives empty
	}
	if f, ok := pyproto.MapFields(payload); ok && isResultShape(f) {
		if r, err := wire.DecodeResult(payload); err == nil {
			if r.Error != "" {
				return p.traceback("get", "RuntimeError", fmt.Sprintf("task %d failed (worker %s, attempt %d): %s", r.TaskID, r.Worker, r.Attempt, r.Error)), ""
			}
			payload = f["value"]
		}
	}
	msg, err := pyproto.Reply(pyproto.KindReturn, pyproto.Msgpack(payload))
	if err != nil {
		return pyReply{}, "payload cannot be given to Python: " + err.Error()
	}
	if len(msg) > p.c.s.cfg.MaxMessageSize {
		return pyReply{}, fmt.Sprintf("payload of %d bytes as a pickle exceeds the maximum message size", len(msg))
	}
	return pyReply{msg: msg}, ""
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

// join waits until the queue holds no ready or leased task and every task
// Python clients took from it was marked task_done.
func (p *pyConn) join(name string) pyReply {
	tick := time.NewTicker(pyJoinPoll)
	defer tick.Stop()
	for {
		st, err := p.c.s.queues.Stats(name)
		if err != nil && !errors.Is(err, queue.ErrUnknownQueue) {
			return p.queueError("join", err)
		}
		if st.Ready+st.Leased == 0 && p.c.s.py.pending(name) == 0 {
			return p.ret(nil)
		}
		select {
		case <-p.ctx.Done():
			return p.traceback("join", "RuntimeError", wire.ErrShuttingDown.Error())
		case <-tick.C:
		}
	}
}

func (p *pyConn) workerName() string {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	name := c.name
	if name == "" {
		name = pyRole
	}
	return name + "@" + c.addr
}

func (p *pyConn) ret(v any) pyReply {
	msg, err := pyproto.Reply(pyproto.KindReturn, v)
	if err != nil { // a bug: every value returned here pickles
		return p.traceback("", "RuntimeError", "qm master: "+err.Error())
	}
	return pyReply{msg: msg}
}

// errorReply raises exc in the client, as a Python manager does for an
// exception of the object's method.
func (p *pyConn) errorReply(exc pyproto.Exception) pyReply {
	msg, err := pyproto.Reply(pyproto.KindError, exc)
	if err != nil {
		return p.traceback("", exc.Name, fmt.Sprint(exc.Args...))
	}
	return pyReply{msg: msg}
}

// traceback makes the client raise multiprocessing.managers.RemoteError
// with a text in the form of a Python traceback, as a Python manager
// replies to an error outside the object's method.
func (p *pyConn) traceback(method, excType, text string) pyReply {
	where := "qm master"
	if method != "" {
		where += ", serving " + method + "()"
	}
	// A tuple of two strings always pickles.
	msg, _ := pyproto.Reply(pyproto.KindTraceback,
		fmt.Sprintf("Traceback (most recent call last):\n  %s\n%s: %s\n", where, excType, text))
	return pyReply{msg: msg}
}

// queueError reports an error of the queue manager.
func (p *pyConn) queueError(method string, err error) pyReply {
	if errors.Is(err, queue.ErrClosed) || p.ctx.Err() != nil {
		return p.traceback(method, "RuntimeError", wire.ErrShuttingDown.Error())
	}
	return p.traceback(method, "ValueError", "qm master: "+err.Error())
}

// pyRepr renders a short value as Python's repr would, near enough.
func pyRepr(v any) string {
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
