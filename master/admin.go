package master

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/qm-dev/qm/master/httpapi"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// The operators' view of the server, shared by the admin ops of the wire
// protocol and the HTTP endpoints (adminBackend).

// queueStats returns the figures of every queue read in time, sorted by
// name, and how many were not (Stats.Unread): /metrics and the dashboard
// show no figure rather than zeros for those, and /metrics their count.
//
// A cluster whose queues cannot be listed (its quorum lost) shows none
// here, and says why in the log; inspect and queues fail instead.
func (s *Server) queueStats() (read []wire.QueueStats, unread int, err error) {
	all, err := s.queues.AllStats()
	if err != nil {
		s.log.Warn("listing queues failed", "err", err)
	}
	read = make([]wire.QueueStats, 0, len(all))
	for _, st := range all {
		if st.Unread {
			unread++
			continue
		}
		read = append(read, wireStats(st))
	}
	return read, unread, err
}

func wireStats(st queue.Stats) wire.QueueStats {
	return wire.QueueStats{
		Queue: st.Queue, Ready: st.Ready, Leased: st.Leased, Done: st.Done, Dead: st.Dead,
		Consumers: st.Consumers, OldestAge: st.OldestReady, MaxLen: st.MaxLen,
		Puts: st.Puts, Gets: st.Gets, Acks: st.Acks, Nacks: st.Nacks, Expired: st.Expired, Disconnected: st.Disconnected,
		Paused: st.Paused, Delayed: st.Delayed, Retrying: st.Retrying, NextDue: st.NextDue,
		MaxAttempts: st.Policy.MaxAttempts, BackoffMin: st.Policy.BackoffMin, BackoffMax: st.Policy.BackoffMax,
		Unread: st.Unread,
	}
}

// ready returns why the server cannot serve now, or nil.
func (s *Server) ready() error {
	s.mu.Lock()
	closing, listening := s.closing.Load(), len(s.listeners) > 0
	s.mu.Unlock()
	switch {
	case closing:
		return errors.New("shutting down")
	case !listening:
		return errors.New("not listening yet")
	}
	if s.store != nil {
		if err := s.store.Writable(); err != nil {
			return fmt.Errorf("data directory: %w", err)
		}
	}
	// Queues in an engine (a gateway to JetStream) say whether it
	// serves: whether it is reachable, and takes puts.
	if r, ok := s.queues.(interface{ Ready() error }); ok {
		return r.Ready()
	}
	return nil
}

// current returns why the server is not ready (ready), or not caught up
// with its cluster (Config.Current), or nil.
func (s *Server) current() error {
	if err := s.ready(); err != nil {
		return err
	}
	if s.cfg.Current != nil {
		return s.cfg.Current()
	}
	return nil
}

// adminBackend is the server as the HTTP endpoints see it.
type adminBackend struct{ s *Server }

var _ httpapi.Backend = adminBackend{}

func (b adminBackend) Queues() ([]wire.QueueStats, error) {
	read, _, err := b.s.queueStats()
	return read, err
}

// Clients lists the clients of every gateway, as `qmaster clients` does,
// with the tasks those of this one hold.
func (b adminBackend) Clients(ctx context.Context) ([]httpapi.Client, string) {
	infos, note := b.s.allClients(ctx)
	own := b.s.gatewayName()
	leases := b.s.queues.Leases()
	out := make([]httpapi.Client, len(infos))
	for i, c := range infos {
		out[i] = httpapi.Client{ClientInfo: c}
		if c.Gateway != "" && c.Gateway != own {
			continue // its leases are the other gateway's
		}
		for _, l := range leases[c.ID] {
			out[i].Tasks = append(out[i].Tasks, httpapi.Lease{Queue: l.Queue, ID: l.ID, Attempt: l.Attempts, Since: l.Since})
		}
	}
	return out, note
}

func (b adminBackend) Peek(q string, n int) ([]wire.Task, error) {
	ts, err := b.s.queues.Peek(q, n)
	return wireTasks(q, ts), err
}

func (b adminBackend) Purge(q string) (int, error) { return b.s.queues.Purge(q) }

func (b adminBackend) Pause(q string) error {
	_, err := b.s.operate(wire.OpPause, q, nil)
	return err
}

func (b adminBackend) Resume(q string) error {
	_, err := b.s.operate(wire.OpResume, q, nil)
	return err
}

func (b adminBackend) Requeue(q string, ids []uint64) (int, error) {
	return b.s.operate(wire.OpRequeue, q, ids)
}

func (b adminBackend) Drop(q string, ids []uint64) (int, error) {
	return b.s.operate(wire.OpDrop, q, ids)
}

func (b adminBackend) Ready() error { return b.s.ready() }

func (b adminBackend) Current() error { return b.s.current() }

// operate runs an operator's action on queue q: pause, resume, requeue
// (of q's dead tasks ids, all if none) or drop (of q's ready tasks ids).
// It returns how many tasks moved.
func (s *Server) operate(op wire.Op, q string, ids []uint64) (int, error) {
	switch op {
	case wire.OpPause:
		return 0, s.queues.SetPaused(q, true)
	case wire.OpResume:
		return 0, s.queues.SetPaused(q, false)
	case wire.OpRequeue:
		return s.queues.Requeue(q, ids)
	case wire.OpRunNow:
		return s.queues.RunNow(q, ids)
	case wire.OpDrop:
		if len(ids) == 0 {
			return 0, fmt.Errorf("%w: drop takes the ids of the tasks (purge drops them all)", wire.ErrBadRequest)
		}
		return s.queues.Drop(q, ids)
	}
	return 0, fmt.Errorf("%w: %s is no operator action", wire.ErrBadRequest, op)
}

// operate is Server.operate for a client's request, logged with the
// client's ID (the HTTP endpoints log their own).
func (c *clientConn) operate(req *wire.Request) (int, error) {
	n, err := c.s.operate(req.Op, req.Queue, req.IDs)
	c.audit(req, n, err)
	return n, err
}

// audit logs an operator's action of a client, with the name of its key:
// the audit trail of who purged, deleted, paused, resumed, requeued or
// dropped what. n is how many tasks moved.
//
// What a request names is logged within bounds: the first maxLoggedIDs of
// its task IDs, and of a queue name (refused if too long) its first
// maxLoggedName bytes.
func (c *clientConn) audit(req *wire.Request, n int, err error) {
	attrs := []any{"queue", logName(req.Queue), "key", c.keyName(), "client", c.id, "remote", c.addr}
	switch {
	case len(req.IDs) > maxLoggedIDs: // a line, not megabytes, for a requeue of 100,000
		attrs = append(attrs, "tasks", req.IDs[:maxLoggedIDs], "more_tasks", len(req.IDs)-maxLoggedIDs)
	case len(req.IDs) > 0:
		attrs = append(attrs, "tasks", req.IDs)
	}
	if req.Op == wire.OpRequeue || req.Op == wire.OpDrop || req.Op == wire.OpPurge || req.Op == wire.OpRunNow {
		attrs = append(attrs, "count", n)
	}
	if req.Op == wire.OpConfig {
		attrs = append(attrs, "max_attempts", req.MaxAttempts, "backoff_min", req.BackoffMin, "backoff_max", req.BackoffMax)
	}
	if req.CancelTasks {
		attrs = append(attrs, "cancel_tasks", true)
		if errors.Is(err, queue.ErrUnknownQueue) {
			// What was asked for is done: the tasks that reply to it are
			// cancelled.
			c.s.log.Info("queue "+req.Op.String()+": no such queue; the tasks that reply to it are cancelled", attrs...)
			return
		}
	}
	if err != nil {
		c.s.log.Warn("queue "+req.Op.String()+" failed", append(attrs, "err", err)...)
	} else {
		c.s.log.Info("queue "+req.Op.String(), attrs...)
	}
}

// The bounds of what an audit line logs of a request.
const (
	maxLoggedIDs  = 20
	maxLoggedName = 256
)

// logName is name as a log line shows it: cut to maxLoggedName bytes,
// with how long it was.
func logName(name string) string {
	if len(name) <= maxLoggedName {
		return name
	}
	return fmt.Sprintf("%s... (%d bytes)", strings.ToValidUTF8(name[:maxLoggedName], ""), len(name))
}
