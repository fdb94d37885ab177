package master

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/master/pymanager"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// The master's side of package pymanager: the Backend that Python
// clients are served from, and each connection as a pymanager.Client.

func (s *Server) newPyManager() *pymanager.Server {
	var cluster pymanager.Cluster
	if s.asker != nil {
		cluster = pyCluster{s} // gateways.go
	}
	return pymanager.New(pymanager.Config{
		Backend:          pyBackend{Queues: s.queues, s: s},
		TypeIDs:          s.cfg.PyTypeIDs,
		ResultsQueue:     s.cfg.PyResultsQueue,
		MaxMessageSize:   s.cfg.MaxMessageSize,
		HandshakeTimeout: s.cfg.HandshakeTimeout,
		Go:               s.goRun,
		Cluster:          cluster,
		Logger:           s.log,
	})
}

// pyBackend is the Server as pymanager.Backend: its queues, and whether
// it takes work.
type pyBackend struct {
	Queues
	s *Server
}

func (b pyBackend) Closing() bool   { return b.s.isClosing() }
func (b pyBackend) AdmitPut() error { return b.s.checkMemory() }

// Put refuses, as a native put does, an item that no get could hand out.
func (b pyBackend) Put(ctx context.Context, req queue.PutRequest) ([]uint64, error) {
	if err := b.s.checkItemSizes(req.Items); err != nil {
		return nil, err
	}
	if err := checkPayloadDepths(req.Items); err != nil {
		return nil, err
	}
	return b.Queues.Put(ctx, req)
}

// Nack cuts a failure's text as a native worker's is cut.
// DeletedSince reports whether a client deleted queue name after at
// (deletedQueues).
func (b pyBackend) DeletedSince(name string, at time.Time) bool {
	deleted, ok := b.s.deleted.since(name)
	return ok && at.Before(deleted)
}

// Get is the server's get, which drops cancelled tasks (getTasks).
func (b pyBackend) Get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error) {
	return b.s.getTasks(ctx, req, dst)
}

func (b pyBackend) Nack(req queue.NackRequest) error {
	req.Error = cutError(req.Error)
	return b.Queues.Nack(req)
}

// pyClient is a clientConn as pymanager.Client.
type pyClient struct{ c *clientConn }

func (p pyClient) Conn() net.Conn           { return p.c.conn }
func (p pyClient) ID() uint64               { return p.c.id }
func (p pyClient) Addr() string             { return p.c.addr }
func (p pyClient) Context() context.Context { return p.c.ctx }
func (p pyClient) Identify(name string)     { p.c.setIdentity(pymanager.Role, name) }
func (p pyClient) Close()                   { p.c.close() }

func (p pyClient) Authorize(method string, perm acl.Perm, queue string) error {
	return p.c.authorizePython(method, perm, queue)
}

func (p pyClient) AuthorizeReplyTo(method, queue string) error {
	k := p.c.key.Load()
	if k == nil {
		return nil
	}
	err := mayNameReplyTo(k, queue)
	if err != nil {
		p.c.denied("py_"+method, err)
	}
	return err
}

func (p pyClient) BeginCall() func(method string) {
	p.c.active.Add(1)
	start := time.Now()
	p.c.lastSeen.Store(start.UnixNano())
	return func(method string) {
		p.c.s.metrics.observePython(method, start)
		p.c.active.Add(-1)
	}
}

// refusePython answers a Python client refused at MaxConns with an error
// it raises (see pymanager.Refuse).
func (c *clientConn) refusePython(header []byte) {
	pymanager.Refuse(c.conn, header, "ConnectionRefusedError", fmt.Sprintf(
		"%v: too many connections (qmaster --max-conns %d); try again later", wire.ErrMasterFull, c.s.cfg.MaxConns))
}
