package master

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/wire"
)

// Who may do what (issue 18): the keys a client may authenticate with and
// each key's permissions, from Config.ACL or the one Config.Authkey.
// SetACL swaps the rules whole; each connection holds the *acl.Key it
// proved, which SetACL replaces (or revokes) on every live connection.

// accessControl is the server's current rules.
type accessControl struct {
	// rules is nil only with InsecureNoAuth: no key, no limits.
	rules     atomic.Pointer[acl.Rules]
	reloadMu  sync.Mutex // one SetACL at a time
	deniedLog logEvery   // denials, logged at most once a second
}

func (a *accessControl) init(cfg *Config) {
	a.deniedLog.period = time.Second
	switch {
	case cfg.InsecureNoAuth: // even with an Authkey, as before
	case cfg.ACL != nil:
		a.rules.Store(cfg.ACL)
	case len(cfg.Authkey) > 0:
		a.rules.Store(acl.Single(cfg.Authkey))
	}
}

// Errors of SetACL.
var (
	errNoRules = errors.New("acl: no rules")
	errNoAuth  = errors.New("acl: the master serves without authentication (InsecureNoAuth): it has no keys to change")
)

// SetACL replaces the keys and their permissions. A connection whose key
// remains (by name) goes on, its next call checked against the key's new
// permissions; a connection whose key is gone is closed, its leases
// requeued. It returns how many connections it closed.
func (s *Server) SetACL(rules *acl.Rules) (closed int, err error) {
	switch {
	case rules == nil:
		return 0, errNoRules
	case s.access.rules.Load() == nil:
		return 0, errNoAuth
	}
	s.access.reloadMu.Lock()
	defer s.access.reloadMu.Unlock()
	s.access.rules.Store(rules)
	s.mu.Lock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if c.ctx.Err() != nil {
			// Closed already (by an earlier SetACL, say), and not yet
			// gone from s.conns: not closed, or counted, again.
			continue
		}
		old := c.key.Load()
		if old == nil {
			continue // in its handshake: bindKey reads the new rules
		}
		if k := rules.Lookup(old.Name); k != nil {
			c.key.Store(k)
			c.endDeniedGets(k)
			continue
		}
		// A key with no permissions, so that a call already read is
		// refused too.
		c.key.Store(&acl.Key{Name: old.Name})
		c.close()
		closed++
		s.log.Info("acl: key removed; its connection closed", "key", old.Name, "client", c.id, "remote", c.addr)
	}
	return closed, nil
}

// bindKey gives c the key named name of the current rules, or reports
// false if no key has that name any more (the rules changed during the
// handshake). It rereads the rules until they held still while it
// stored the key, so that a concurrent SetACL, which skips connections
// with no key yet, never leaves c with a stale one.
func (c *clientConn) bindKey(name string) bool {
	for {
		rules := c.s.access.rules.Load()
		k := rules.Lookup(name)
		if k == nil {
			return false
		}
		c.key.Store(k)
		if c.s.access.rules.Load() == rules {
			return true
		}
	}
}

// keyName is the name of c's key, or "" without authentication.
func (c *clientConn) keyName() string {
	if k := c.key.Load(); k != nil {
		return k.Name
	}
	return ""
}

// authorize returns a *acl.DeniedError if key k, c's, may not make req,
// and counts and logs it; without authentication (k nil) everything is
// allowed. A complete's result queue is checked in complete.
func (c *clientConn) authorize(k *acl.Key, req *wire.Request) error {
	if k == nil {
		return nil
	}
	var err error
	q := req.Queue
	switch req.Op {
	case wire.OpPut:
		err = k.Check(acl.Put, q)
		if err == nil && req.ReplyTo != "" {
			err = mayNameReplyTo(k, req.ReplyTo)
		}
	case wire.OpGet, wire.OpAck, wire.OpNack, wire.OpExtend, wire.OpComplete, wire.OpRelease:
		err = k.Check(acl.Get, q)
	case wire.OpStats:
		if q != "" {
			err = k.Check(acl.Use, q)
		} else {
			err = k.CheckAdmin("inspect every queue")
		}
	case wire.OpPeek, wire.OpDelayed:
		err = k.CheckAdmin("peek at " + q)
	case wire.OpQueues:
		err = k.CheckAdmin("list the queues")
	case wire.OpClients:
		err = k.CheckAdmin("list the clients")
	case wire.OpDelete:
		err = k.Check(acl.Delete, q)
	case wire.OpConfig:
		err = k.CheckAdmin("set the retry policy of " + q)
	case wire.OpRunNow:
		err = k.CheckAdmin("run the delayed tasks of " + q + " now")
	case wire.OpPurge, wire.OpPause, wire.OpResume, wire.OpRequeue, wire.OpDrop:
		err = k.CheckAdmin(req.Op.String() + " " + q)
	}
	if err != nil {
		c.denied(req.Op.String(), err)
	}
	return err
}

// mayNameReplyTo returns a *acl.DeniedError if key k may not name queue
// as the reply queue of its tasks. Workers publish results to the reply
// queue a task names, which they need no permission for: a producer may
// name only a queue it could write or read itself, or it could have
// workers write where it may not (a confused deputy).
func mayNameReplyTo(k *acl.Key, queue string) error {
	if k.May(acl.Put, queue) || k.May(acl.Get, queue) {
		return nil
	}
	return &acl.DeniedError{Key: k.Name, Action: "name " + queue + " as a reply queue"}
}

// mayPublishTo returns a *acl.DeniedError if c's key may not publish
// results to resultQueue (one it may not put to), without counting it:
// complete counts it if a result is dropped for it.
func (c *clientConn) mayPublishTo(resultQueue string) error {
	k := c.key.Load()
	if k == nil || resultQueue == "" {
		return nil
	}
	if err := k.Check(acl.Put, resultQueue); err != nil {
		return &acl.DeniedError{Key: k.Name, Action: "publish results to " + resultQueue}
	}
	return nil
}

// authorizePython is authorize for a Python client's call of method.
func (c *clientConn) authorizePython(method string, p acl.Perm, queue string) error {
	k := c.key.Load()
	if k == nil {
		return nil
	}
	err := k.Check(p, queue)
	if err != nil {
		c.denied("py_"+method, err)
	}
	return err
}

// denied counts a denial of op by c's key, and logs it (at most once a
// second, so that a misconfigured worker cannot flood the log).
func (c *clientConn) denied(op string, err error) {
	key := c.keyName()
	c.s.metrics.denied.WithLabelValues(key, op).Inc()
	if c.s.access.deniedLog.ok(time.Now()) {
		c.s.log.Warn("permission denied (logged at most once a second)", "key", key, "op", op,
			"client", c.id, "remote", c.addr, "err", err)
	}
}

// endDeniedGets ends the waiting gets of c that its key k, just
// reloaded, may no longer make, with a *acl.DeniedError as their cause.
// (A get that takes tasks just as the reload comes is checked again
// after: see get.)
func (c *clientConn) endDeniedGets(k *acl.Key) {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	for _, sc := range c.calls {
		if sc.cancel == nil || sc.op != wire.OpGet {
			continue
		}
		if err := k.Check(acl.Get, sc.queue); err != nil {
			sc.cancel(err)
		}
	}
}
