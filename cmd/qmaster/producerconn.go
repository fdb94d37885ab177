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
// reconnects only if the master said its queues outlive it (a
// --data-dir, or a gateway of a cluster, which an address in front of
// several gateways may reach): a lone master without --data-dir that
// comes back has lost the tasks, and map would wait for their results
// for ever.
//
// map's producer and collector share it; each asks for a new connection
// when a call fails on the one it has, and the first to ask makes it.
type producerConn struct {
	name      string // the command, for its messages: "qmaster map"
	dial      func(context.Context) (*wire.Client, error)
	reconnect bool
	// others says the address names several masters: one that does not
	// answer in time is given up for another. A lone master that does
	// not answer is most likely cut off or stuck, and the command says
	// so rather than connect to it again and again.
	others bool
	// idPrefix starts the request ID of each put: unique to the run,
	// followed by its first input line's number. A put is sent again
	// through another gateway, and also through the same one after it
	// answered that its engine was electing a leader (wire.ErrUnavailable)
	// when the put may be stored already: under its ID it adds nothing.
	idPrefix string
	errOut   io.Writer
	redial   time.Duration // how long replace tries; 0: redialFor

	// abandoned ends the tries to connect again (abandon): the command
	// was interrupted, and its clean-up must not wait for them.
	abandoned     context.Context
	abandonedStop context.CancelFunc

	mu  sync.Mutex
	c   *wire.Client
	gen int   // which connection c is, counted from 0
	err error // why connecting again failed, once it has: map ends

	// The waits of puts of tasks and of gets of results for unavailable
	// queues (the two streams can lose their quorum apart).
	putWait, getWait unavailableWait
}

// dialProducer connects for the producer command cmd ("map", "put"). With
// several masters to reach, or one whose queues outlive it, the
// connection it returns reconnects. It gives the puts request IDs unique
// to the run.
func dialProducer(ctx context.Context, co *clientOptions, f *factory, cmd string) (*producerConn, error) {
	dial := func(ctx context.Context) (*wire.Client, error) {
		return co.connect(ctx, f, "producer", cmd)
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	conn := &producerConn{name: "qmaster " + cmd, dial: dial, c: c, errOut: f.ErrOut, idPrefix: cmd + "-" + randomHex(8) + "-"}
	conn.abandoned, conn.abandonedStop = context.WithCancel(context.Background())
	conn.others = c.Masters() > 1
	conn.reconnect = reconnects(c)
	return conn, nil
}

// reconnects reports whether a command connected by c connects again
// when it loses c: given several masters, or one whose queues outlive it.
func reconnects(c *wire.Client) bool { return c.Masters() > 1 || c.QueuesOutliveMaster() }

// connectionGone reports whether err says the connection is gone: lost,
// or its master stopping.
func connectionGone(err error) bool {
	return errors.Is(err, wire.ErrClosed) || errors.Is(err, wire.ErrShuttingDown)
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
	return m.reconnect && connectionGone(err)
}

// goElsewhere reports whether err says the connection is gone, or, given
// several masters, that the one it reaches did not answer in time: the
// command goes on through another (replace).
func (m *producerConn) goElsewhere(err error) bool {
	return m.lost(err) || m.others && errors.Is(err, context.DeadlineExceeded)
}

// abandon stops the tries to connect again, now and from now on: the
// command was interrupted.
func (m *producerConn) abandon() { m.abandonedStop() }

// replace returns a working connection in place of connection gen, which
// failed with cause: a new one, made now unless another caller made it
// already.
func (m *producerConn) replace(ctx context.Context, gen int, cause error) (*wire.Client, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(m.abandoned, cancel)()
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
	m.abandon()
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

// unavailableWait is a wait of one kind of call (what: "puts of tasks")
// for unavailable queues: a gateway's engine is electing a leader, or has
// lost its quorum or its nodes. The command waits for them as long as it
// takes, but says so on out, with the gateway's reason, once the wait is
// long enough to notice, and says when it is over.
type unavailableWait struct {
	waiting     atomic.Bool // since is set: a quick look for over
	mu          sync.Mutex
	since, told time.Time
}

// unavailable notes a call begun at start and answered that the queues
// are unavailable (err).
func (w *unavailableWait) unavailable(out io.Writer, name, what string, err error, start time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.waiting.Load() {
		w.since, w.told = start, time.Time{}
		w.waiting.Store(true)
	}
	now := time.Now()
	waited := now.Sub(w.since)
	if w.told.IsZero() && waited >= unavailableNoticeAfter || !w.told.IsZero() && now.Sub(w.told) >= unavailableNoticeEvery {
		fmt.Fprintf(out, "%s: %s have been answered \"unavailable\" for %s (%v); waiting for the queues\n", name, what, waited.Round(time.Second), err)
		w.told = now
	}
}

// over notes a call of the kind that the queues answered: the wait, if
// one was said, is said to be over.
func (w *unavailableWait) over(out io.Writer, name, what string) {
	if !w.waiting.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting.Load() && !w.told.IsZero() {
		fmt.Fprintf(out, "%s: %s are answered again, after %s\n", name, what, time.Since(w.since).Round(time.Second))
	}
	w.waiting.Store(false)
}

// Kinds of calls whose waits for unavailable queues are told apart.
const (
	putsOfTasks   = "puts of tasks"
	getsOfResults = "gets of results"
)

// putUnavailable and putAnswered note puts of tasks (putWaiting): a put
// stored, or refused as full, is answered.
func (m *producerConn) putUnavailable(err error, start time.Time) {
	m.putWait.unavailable(m.errOut, m.name, putsOfTasks, err, start)
}
func (m *producerConn) putAnswered() { m.putWait.over(m.errOut, m.name, putsOfTasks) }

// getUnavailable and resultsGot note gets of results (collect). A get
// answered empty proves nothing: a gateway whose engine is down may
// answer so; one that hands results over does.
func (m *producerConn) getUnavailable(err error, start time.Time) {
	m.getWait.unavailable(m.errOut, m.name, getsOfResults, err, start)
}
func (m *producerConn) resultsGot() { m.getWait.over(m.errOut, m.name, getsOfResults) }
