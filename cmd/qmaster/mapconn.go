package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/qm-dev/qm/wire"
)

// mapConn is map's connection to the master. Given several addresses
// (gateways to one cluster, or a name of several), map carries on through
// another when its gateway dies: the cluster keeps the queues, so the
// results of tasks put through the dead gateway still come. A batch whose
// put was in flight then is put again, since it may not have been stored.
// Its tasks carry idempotency keys, the run's and the line's, so a batch
// that was stored is not stored twice: the put again gets the first tasks'
// IDs (within the master's --dedup-window). Should a task still run twice,
// map prints the first result of its line, ignoring the other (and says
// how many it ignored).
//
// With one address it does not reconnect: a lone master that comes back
// may have lost the tasks (without --data-dir), and map would wait for
// their results for ever.
//
// The producer and the collector share it; each asks for a new connection
// when a call fails on the one it has, and the first to ask makes it.
type mapConn struct {
	dial      func(context.Context) (*wire.Client, error)
	reconnect bool
	// keyPrefix, with reconnect, starts the idempotency key of each
	// task: unique to the run, followed by the input line's number.
	keyPrefix string
	errOut    io.Writer

	mu  sync.Mutex
	c   *wire.Client
	gen int   // which connection c is, counted from 0
	err error // why connecting again failed, once it has: map ends
}

// mapRedialFor is how long map tries to reach another gateway before it
// gives up: long enough for a node's restart or a leader's election.
const mapRedialFor = time.Minute

// keys returns the idempotency keys of batch's tasks, or nil when map
// does not reconnect (and so never puts a batch twice).
func (m *mapConn) keys(batch []inputLine) []string {
	if m.keyPrefix == "" {
		return nil
	}
	keys := make([]string, len(batch))
	for i, l := range batch {
		keys[i] = m.keyPrefix + strconv.Itoa(l.N)
	}
	return keys
}

func (m *mapConn) client() (*wire.Client, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.c, m.gen
}

// lost reports whether err says the connection is gone, and map may go on
// through another.
func (m *mapConn) lost(err error) bool {
	return m.reconnect && (errors.Is(err, wire.ErrClosed) || errors.Is(err, wire.ErrShuttingDown))
}

// replace returns a working connection in place of connection gen, which
// failed with cause: a new one, made now unless another caller made it
// already.
func (m *mapConn) replace(ctx context.Context, gen int, cause error) (*wire.Client, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.err != nil:
		return nil, m.gen, m.err
	case gen != m.gen:
		return m.c, m.gen, nil
	}
	m.c.Close()
	fmt.Fprintf(m.errOut, "qmaster map: connection lost (%v); connecting again\n", cause)
	deadline := time.Now().Add(mapRedialFor)
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

func (m *mapConn) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.c.Close()
}
