package pymanager

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/pyproto"
)

// Role is a Python client's role in the master's client list.
const Role = "python"

// Backend is the master as Python clients see it. Its methods are safe
// for concurrent use.
type Backend interface {
	Put(ctx context.Context, req queue.PutRequest) ([]uint64, error)
	Get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error)
	Unget(req queue.GetRequest, ts []queue.Task)
	Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error)
	Nack(req queue.NackRequest) error
	Stats(queue string) (queue.Stats, error)
	// Release requeues the tasks a client still holds when it leaves.
	Release(owner uint64) int
	// Closing reports whether the master is shutting down: every call
	// then fails.
	Closing() bool
	// AdmitPut refuses a put while the master is full, or returns nil.
	AdmitPut() error
	// DeletedSince reports whether a client deleted queue name after at.
	DeletedSince(name string, at time.Time) bool
}

// Client is the master's side of one Python connection.
type Client interface {
	// Conn is the connection, authenticated.
	Conn() net.Conn
	// ID owns the leases the client's gets take.
	ID() uint64
	// Addr is the client's address, for logs and worker names.
	Addr() string
	// Context ends when the connection is closed or the master stops.
	Context() context.Context
	// Identify names the client, with Role, in the client list.
	Identify(name string)
	// BeginCall is called as a request arrives; the func it returns is
	// called once the reply is written, with the request's method ("" if
	// the request did not decode).
	BeginCall() (end func(method string))
	// Close closes the connection.
	Close()
	// Authorize returns an error if the client's key may not do p to
	// queue, for a call of method; its text is the client's to see.
	Authorize(method string, p acl.Perm, queue string) error
	// AuthorizeReplyTo returns an error if the client's key may not name
	// queue as its tasks' reply queue, for a call of method.
	AuthorizeReplyTo(method, queue string) error
}

// Config configures a Server.
type Config struct {
	// Backend is the master. Required.
	Backend Backend
	// TypeIDs maps typeids to queues, before ClassicTypeIDs and
	// get_<queue>_queue.
	TypeIDs map[string]string
	// ResultsQueue is the workers' results queue: a Python worker's put
	// to it is the result of the task it took last (results.go). Required.
	ResultsQueue string
	// MaxMessageSize bounds a request, and a reply as a pickle. Required.
	MaxMessageSize int
	// HandshakeTimeout bounds the wait for a connection's first request.
	// Required.
	HandshakeTimeout time.Duration
	// Go runs f in a goroutine the master owns, or reports false if the
	// master is stopping. Required.
	Go func(f func()) bool
	// Cluster, if not nil, is the other gateways of a cluster this
	// server is one of: a Python client may take a task through one
	// gateway and mark it done through another, and join() waits for the
	// tasks taken through all of them. Nil counts this server's alone.
	Cluster Cluster
	// Logger; nil discards.
	Logger *slog.Logger
}

// Cluster is the gateways of a cluster, as join() and task_done() count
// Python's tasks across them.
type Cluster interface {
	// Unfinished sums Server.Unfinished over every gateway of the
	// cluster, this one's included.
	Unfinished(queue string) (int, error)
	// TakeDone marks done a task of queue taken through another gateway,
	// at that gateway (its Server.TakeDone), and reports whether one had
	// one.
	TakeDone(queue string) (bool, error)
}

// Server serves the Python connections of one master. It holds what they
// share: the tasks each queue handed to Python gets and not yet marked
// task_done, for join().
type Server struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	unfinished map[string]int
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log, unfinished: make(map[string]int)}
}

// errTooMany is task_done()'s error, called once too often.
var errTooMany = errors.New("task_done() called too many times")

// tookTasks counts n tasks of queue q taken by a Python get.
func (s *Server) tookTasks(q string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.add(q, n)
}

// taskDone counts a task_done() of queue q. Called once more than its
// tasks taken, it fails, as Python's queue does; in a cluster, once more
// than those taken through every gateway: a task_done() of a task taken
// through another gateway is counted there.
func (s *Server) taskDone(q string) error {
	if s.TakeDone(q) {
		return nil
	}
	if s.cfg.Cluster == nil {
		return errTooMany
	}
	taken, err := s.cfg.Cluster.TakeDone(q)
	if err != nil {
		return err
	}
	if !taken {
		return errTooMany
	}
	return nil
}

// TakeDone marks done one of the tasks of queue q this server's Python
// clients took, and reports whether they had one not marked done.
func (s *Server) TakeDone(q string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unfinished[q] <= 0 {
		return false
	}
	s.add(q, -1)
	return true
}

// add adds n to queue q's count. Called with s.mu held.
func (s *Server) add(q string, n int) {
	s.unfinished[q] += n
	if s.unfinished[q] == 0 {
		delete(s.unfinished, q)
	}
}

// Unfinished counts the tasks of queue q this server's Python clients
// took and have not marked done.
func (s *Server) Unfinished(q string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unfinished[q]
}

// unfinishedEverywhere is Unfinished over every gateway of a cluster, or
// this server's alone.
func (s *Server) unfinishedEverywhere(q string) (int, error) {
	if s.cfg.Cluster == nil {
		return s.Unfinished(q), nil
	}
	return s.cfg.Cluster.Unfinished(q)
}

// frame is one frame read from a Python client; or one it refused whole
// (tooLarge), to be answered with an error as the connection goes on; or
// the error that ended reading.
type frame struct {
	msg      []byte
	tooLarge error
	err      error
	// end ends the call that Client.BeginCall began as the frame's first
	// byte arrived; nil if none did.
	end func(method string)
}

// maxSkippedFrame bounds the oversized frames that are read and dropped
// so that the connection goes on; a longer one ends it.
const maxSkippedFrame = 1 << 30

// Serve serves one client, one request and one reply at a time, until it
// leaves or its connection fails; then its leases are released. first
// holds the 4-byte length header of its first frame, read already.
func (s *Server) Serve(c Client, first []byte) {
	ctx, cancel := context.WithCancel(c.Context())
	defer cancel()
	p := &conn{s: s, c: c, log: s.log.With("remote", c.Addr(), "client", c.ID()), ctx: ctx}
	frames := make(chan frame)
	readDone := make(chan struct{})
	if !s.cfg.Go(func() { defer close(readDone); p.read(first, frames, cancel) }) {
		return
	}
	defer func() {
		c.Close() // ends the reader
		<-readDone
		if n := s.cfg.Backend.Release(c.ID()); n > 0 {
			p.log.Info("python client gone; its leased tasks requeued", "tasks", n)
		}
		if p.name != "" {
			p.log.Debug("python client disconnected")
		}
	}()
	for f := range frames {
		if f.err != nil {
			if f.end != nil {
				f.end("")
			}
			p.readFailed(f.err)
			return
		}
		var r reply
		if f.tooLarge != nil {
			p.log.Warn("python client: message too large; refused", "err", f.tooLarge)
			r = traceback("", "ValueError", fmt.Sprintf("%v (the master's --max-message-size)", f.tooLarge))
		} else {
			r = p.handle(f.msg)
		}
		err := pyproto.WriteMessage(c.Conn(), r.msg)
		if r.after != nil {
			r.after(err == nil)
		}
		f.end(r.method)
		if err != nil {
			p.log.Debug("python client: write failed", "err", err)
			return
		}
	}
}

// maxRefusedRequest bounds the first request that Refuse reads and
// discards: a manager's first request on a connection (dummy, create,
// incref, decref, accept_connection) is a hundred bytes or so.
const maxRefusedRequest = 64 << 10

// Refuse answers a Python client the master will not serve with a
// '#TRACEBACK' reply, which Python raises as RemoteError with excType and
// text, rather than closing on it with no word. header is the 4-byte
// length of the client's first request, already read. The request is read
// and discarded first, within the deadline the caller set: closing a
// socket with unread data resets the connection, and the client could
// lose the reply. A request beyond maxRefusedRequest, or not sent in
// time, gets no reply.
func Refuse(c net.Conn, header []byte, excType, text string) {
	n := binary.BigEndian.Uint32(header)
	if n > maxRefusedRequest {
		return
	}
	if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
		return
	}
	_ = pyproto.WriteMessage(c, traceback("", excType, text).msg)
}

// read reads frames until the connection fails or ends, and hands them to
// the serving loop. The first frame must arrive within the handshake
// timeout. A call begins (Client.BeginCall) as its frame's first byte
// arrives, so that a shutdown waiting for calls to end never misses one
// being read. Once reading fails, cancel ends the calls the client waits
// on.
func (p *conn) read(first []byte, frames chan<- frame, cancel context.CancelFunc) {
	defer close(frames)
	nc := p.c.Conn()
	_ = nc.SetReadDeadline(time.Now().Add(p.s.cfg.HandshakeTimeout))
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(first), nc))
	for n := 0; ; n++ {
		var f frame
		if _, err := r.Peek(1); err == nil {
			f.end = p.c.BeginCall()
		}
		f.msg, f.err = pyproto.ReadMessage(r, p.s.cfg.MaxMessageSize)
		var tl *pyproto.TooLargeError
		if errors.As(f.err, &tl) && tl.Size <= maxSkippedFrame {
			// Drop the body, so that the client gets its answer and the
			// connection goes on.
			if _, err := io.CopyN(io.Discard, r, int64(tl.Size)); err == nil {
				f.tooLarge, f.err = f.err, nil
			}
		}
		if n == 0 && f.err == nil {
			_ = nc.SetReadDeadline(time.Time{})
		}
		if f.err != nil {
			cancel()
		}
		select {
		case frames <- f:
		case <-p.c.Context().Done():
			if f.end != nil {
				f.end("")
			}
			return
		}
		if f.err != nil {
			return
		}
	}
}

func (p *conn) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	case errors.Is(err, pyproto.ErrMessageTooLarge):
		p.log.Warn("python client: message too large; connection closed", "err", err)
		r := traceback("", "ValueError", fmt.Sprintf("%v (the master's --max-message-size)", err))
		_ = p.c.Conn().SetWriteDeadline(time.Now().Add(p.s.cfg.HandshakeTimeout))
		_ = pyproto.WriteMessage(p.c.Conn(), r.msg)
	case errors.As(err, &ne) && ne.Timeout():
		p.log.Warn("python client sent no request in time; connection closed")
	default:
		p.log.Debug("python client: read failed", "err", err)
	}
}
