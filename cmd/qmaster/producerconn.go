package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/wire"
)

// producerConn is the connection of a producer command, map or put, to
// the master. Given several comma-separated addresses (gateways to one
// cluster), it carries on through another when its gateway dies: the
// cluster keeps the queues, so the results of tasks put through the dead
// gateway still come. A batch whose put was in flight then is put again,
// since it may not have been stored. Each put carries a request ID, the
// run's and its first line's, so a batch that was stored is not stored
// twice: the put again gets the first tasks' IDs (within the master's
// --dedup-window). A request ID costs the master one entry per put, and
// a gateway packs the put's tasks as it packs any others; idempotency
// keys would cost one per task, and a gateway stores keyed tasks a
// message each. Should a task still run twice, map prints the first
// result of its line, ignoring the other (and says how many it ignored).
//
// A host name that resolves to several addresses counts as that many
// gateways, as one host would have them (wire.Client.Masters): an IPv4 and an
// IPv6 address, or localhost's two, are one master. With one master it
// does not reconnect, since a lone master that comes back may have lost
// the tasks (without --data-dir), and map would wait for their results
// for ever.
//
// map's producer and collector share it; each asks for a new connection
// when a call fails on the one it has, and the first to ask makes it.
type producerConn struct {
	name      string // the command, for its messages: "qmaster map"
	dial      func(context.Context) (*wire.Client, error)
	reconnect bool
	// idPrefix starts the request ID of each put: unique to the run,
	// followed by its first input line's number. A put is sent again
	// through another gateway, and also through the same one after it
	// answered that its engine was electing a leader (wire.ErrUnavailable)
	// when the put may be stored already: under its ID it adds nothing.
	idPrefix string
	errOut   io.Writer
	redial   time.Duration // how long replace tries; 0: redialFor

	mu  sync.Mutex
	c   *wire.Client
	gen int   // which connection c is, counted from 0
	err error // why connecting again failed, once it has: map ends

	// Since when calls are answered that the queues are unavailable, and
	// when that was last said on errOut (unavailable, available).
	waiting                  atomic.Bool // unavailableSince is set: a quick look for available
	noticeMu                 sync.Mutex
	unavailableSince, toldAt time.Time
}

// dialProducer connects for the producer command cmd ("map", "put"). With
// several masters to reach the connection it returns reconnects. It gives
// the puts request IDs unique to the run.
func dialProducer(ctx context.Context, co *clientOptions, f *factory, cmd string) (*producerConn, error) {
	dial := func(ctx context.Context) (*wire.Client, error) {
		return co.connect(ctx, f, "producer", cmd)
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	conn := &producerConn{name: "qmaster " + cmd, dial: dial, c: c, errOut: f.ErrOut, idPrefix: cmd + "-" + randomHex(8) + "-"}
	conn.reconnect = c.Masters() > 1
	return conn, nil
}

// redialFor is how long a producer tries to reach another gateway before it
// gives up: long enough for a node's restart or a leader's election.
const redialFor = time.Minute

// requestID returns the request ID of batch's put.
func (m *producerConn) requestID(batch []inputLine) string {
	if len(batch) == 0 {
		return ""
	}
	return m.idPrefix + strconv.Itoa(batch[0].N)
}

func (m *producerConn) client() (*wire.Client, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.c, m.gen
}

// lost reports whether err says the connection is gone, and the command
// may go on through another.
func (m *producerConn) lost(err error) bool {
	return m.reconnect && (errors.Is(err, wire.ErrClosed) || errors.Is(err, wire.ErrShuttingDown))
}

// replace returns a working connection in place of connection gen, which
// failed with cause: a new one, made now unless another caller made it
// already.
func (m *producerConn) replace(ctx context.Context, gen int, cause error) (*wire.Client, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.err != nil:
		return nil, m.gen, m.err
	case gen != m.gen:
		return m.c, m.gen, nil
	}
	m.c.Close()
	fmt.Fprintf(m.errOut, "%s: connection lost (%v); connecting again\n", m.name, cause)
	deadline := time.Now().Add(cmp.Or(m.redial, redialFor))
	delay := 100 * time.Millisecond
	for {
		c, err := m.dial(ctx)
		if err == nil {
			m.c = c
			m.gen++
			return c, m.gen, nil
		}
		if ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			m.err = fmt.Errorf("connect again after %v: %w", cause, err)
			return nil, m.gen, m.err
		}
		select {
		case <-ctx.Done():
			m.err = ctx.Err()
			return nil, m.gen, m.err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// call makes a call on the connection, and, as long as it fails because
// the connection was lost, again on a new one. It returns the last call's
// error, or why no new connection could be made.
func (m *producerConn) call(ctx context.Context, call func(*wire.Client) error) error {
	c, gen := m.client()
	err := call(c)
	for err != nil && m.lost(err) && ctx.Err() == nil {
		var rerr error
		if c, gen, rerr = m.replace(ctx, gen, err); rerr != nil {
			return rerr
		}
		err = call(c)
	}
	return err
}

func (m *producerConn) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.c.Close()
}

// The notices of a wait for unavailable queues: the first once the wait
// has lasted unavailableNoticeAfter (a leader's election takes a few
// seconds, and needs no word), then one every unavailableNoticeEvery.
const (
	unavailableNoticeAfter = 5 * time.Second
	unavailableNoticeEvery = 30 * time.Second
)

// unavailable notes a call begun at start and answered that the queues
// are unavailable (err): a gateway's engine is electing a leader, or has
// lost its quorum or its nodes. The command waits for them as long as it
// takes, but says so on errOut, with the gateway's reason, once the wait
// is long enough to notice.
func (m *producerConn) unavailable(err error, start time.Time) {
	m.noticeMu.Lock()
	defer m.noticeMu.Unlock()
	if !m.waiting.Load() {
		m.unavailableSince, m.toldAt = start, time.Time{}
		m.waiting.Store(true)
	}
	now := time.Now()
	waited := now.Sub(m.unavailableSince)
	if m.toldAt.IsZero() && waited >= unavailableNoticeAfter || !m.toldAt.IsZero() && now.Sub(m.toldAt) >= unavailableNoticeEvery {
		fmt.Fprintf(m.errOut, "%s: the queues have been unavailable for %s (%v); waiting for them\n", m.name, waited.Round(time.Second), err)
		m.toldAt = now
	}
}

// available notes a call that the queues answered (a put stored, or
// refused as full; a get handed results): a wait for unavailable queues,
// if one was said, is said to be over. (A get answered empty proves
// nothing: a gateway whose engine is down may answer so.)
func (m *producerConn) available() {
	if !m.waiting.Load() {
		return
	}
	m.noticeMu.Lock()
	defer m.noticeMu.Unlock()
	if m.waiting.Load() && !m.toldAt.IsZero() {
		fmt.Fprintf(m.errOut, "%s: the queues are available again, after %s\n", m.name, time.Since(m.unavailableSince).Round(time.Second))
	}
	m.waiting.Store(false)
}
