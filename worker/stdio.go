package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/wire"
)

// StdioConfig configures Stdio. Zero values mean the defaults.
type StdioConfig struct {
	// Command is the program to run, then its arguments; no shell.
	// Required.
	Command []string
	// Children is how many copies of Command run; default 1.
	Children int
	// Envelope writes each task as an object that carries its ID, attempt,
	// queue and last error around its payload (docs/WORKERS.md), for
	// children that want them (idempotency, logs); the children get
	// QM_STDIO_ENVELOPE=1.
	Envelope bool
	// Pipeline is how many tasks may be written ahead to a child that
	// asked for it (docs/WORKERS.md); default DefaultStdioPipeline. A
	// child that did not ask gets one task at a time.
	Pipeline int
	// TaskTimeout fails the attempt of a child that has not answered its
	// task within this long of being given it (or of its previous answer,
	// for a task written ahead), and kills and restarts the child; zero is
	// no limit.
	TaskTimeout time.Duration
	// MaxLine bounds a result line, its '\n' excluded; default
	// wire.DefaultMaxMessageSize. A longer line fails the attempt; the
	// rest of it is skipped and the child goes on.
	MaxLine int
	// RestartMin is the delay before restarting a child that exited or
	// broke the protocol; default 100ms. It doubles for each failure in a
	// row, up to RestartMax (default 5s), and starts again once a child
	// answers a task.
	RestartMin time.Duration
	// RestartMax bounds the delay between restarts; default 5s.
	RestartMax time.Duration
	// StopTimeout is how long Close lets a child run after closing its
	// stdin before it kills it; default 5s.
	StopTimeout time.Duration
	// Logger receives the children's stderr, a line a record, and their
	// restarts; nil discards them.
	Logger *slog.Logger
	// Broken, if set, is called once, when the children have failed
	// (exited, broken the protocol or not started; a timeout is no sign of
	// it) BrokenAfter times between them, a task's failures counting
	// once, before any of them answered a task: the command
	// most likely cannot run here (a syntax error, a missing module), and
	// every task would fail one attempt per restart until its queue has
	// gone to the dead-letter queue. The error names the last failure.
	// qworker stops then, giving its tasks back (GiveBackNow).
	//
	// With Broken set, and until a child answers, a child that fails
	// without having read its task fails no attempt: the task is written
	// again to the child restarted, for BrokenAfter failures and one more
	// per child, after which such a failure fails the task as before.
	Broken func(err error)
}

// BrokenAfter is how many failures of the children before any answer make
// a Stdio call StdioConfig.Broken.
const BrokenAfter = 3

// Validate reports the first invalid field of c, by name.
func (c *StdioConfig) Validate() error {
	switch {
	case len(c.Command) == 0 || c.Command[0] == "":
		return errors.New("stdio config: Command is required")
	case c.Children < 0:
		return errors.New("stdio config: Children must not be negative")
	case c.Pipeline < 0:
		return errors.New("stdio config: Pipeline must not be negative")
	case c.TaskTimeout < 0:
		return errors.New("stdio config: TaskTimeout must not be negative")
	case c.MaxLine < 0:
		return errors.New("stdio config: MaxLine must not be negative")
	case c.RestartMin < 0 || c.RestartMax < 0:
		return errors.New("stdio config: RestartMin and RestartMax must not be negative")
	case c.StopTimeout < 0:
		return errors.New("stdio config: StopTimeout must not be negative")
	}
	return nil
}

func (c *StdioConfig) setDefaults() {
	c.Command = slices.Clone(c.Command)
	if c.Children == 0 {
		c.Children = 1
	}
	if c.Pipeline == 0 {
		c.Pipeline = DefaultStdioPipeline
	}
	if c.MaxLine == 0 {
		c.MaxLine = wire.DefaultMaxMessageSize
	}
	if c.RestartMin == 0 {
		c.RestartMin = 100 * time.Millisecond
	}
	if c.RestartMax == 0 {
		c.RestartMax = max(5*time.Second, c.RestartMin)
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// DefaultStdioPipeline is what StdioConfig.Pipeline 0 means.
const DefaultStdioPipeline = 32

// Stdio runs tasks through long-lived child processes that speak the
// line protocol of docs/WORKERS.md: a task's payload as one line of JSON
// on the child's stdin, its result as one line of JSON on the child's
// stdout, or "!error TEXT" to fail the attempt ("!retry SECONDS TEXT" to
// say when to try again, "!fail TEXT" not to).
//
// Each child is owned by one goroutine, which alone writes to it, reads
// from it, stops and restarts it. Handlers hand their tasks to whichever
// owner is free, through one channel, and wait for the answer. An owner
// writes a child one task at a time, or, once the child has sent the line
// "!pipeline", every task waiting (up to Pipeline) in one write, and
// reads the answers in order. A child that exits, hangs past TaskTimeout
// or breaks the protocol fails the attempt of the task it was answering;
// the owner restarts it, after a backoff, and writes it again the tasks
// it had not answered. A third goroutine per child logs its stderr and
// keeps the end of it for errors.
type Stdio struct {
	cfg      StdioConfig
	children []*child
	reqs     chan *request // to the owners
	quit     chan struct{} // closed by Close: the owners stop their children
	wg       sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	stopErrs  []error // one per child, set by its owner as it ends
	health    *stdioHealth
}

// stdioHealth tells, for StdioConfig.Broken, whether any child has
// answered a task yet, and counts the children's failures until one has:
// each task's once, so that one task that kills its child on every
// attempt is a bad task, not a broken command.
type stdioHealth struct {
	answered atomic.Bool
	failures atomic.Int32
	once     sync.Once
	broken   func(error)

	children int // StdioConfig.Children

	mu      sync.Mutex
	counted map[uint64]bool // tasks whose failures counted
}

// answer notes that a child answered a task.
func (h *stdioHealth) answer() { h.answered.Store(true) }

// counting reports whether the children's failures are still taken for
// a command that may be broken, not for their tasks' doing: Broken is
// set, and no child has answered a task. Each child may fail once more
// after the BrokenAfter-th failure calls Broken, as they fail together,
// while the worker stops; past that a failure is the task's again, so
// that no task waits for ever on a worker that does not stop.
func (h *stdioHealth) counting() bool {
	return h.broken != nil && !h.answered.Load() && !commandsKilled.Load() && int(h.failures.Load()) < BrokenAfter+h.children
}

// fail notes that child id failed with err, on task (0: none), and calls
// broken once the children have failed BrokenAfter times before any
// answer, a task counting once.
func (h *stdioHealth) fail(id int, task uint64, err error) {
	if h.broken == nil || h.answered.Load() || err == nil || commandsKilled.Load() {
		return
	}
	if task != 0 {
		h.mu.Lock()
		seen := h.counted[task]
		if h.counted == nil {
			h.counted = make(map[uint64]bool)
		}
		h.counted[task] = true
		h.mu.Unlock()
		if seen {
			return
		}
	}
	if n := h.failures.Add(1); n >= BrokenAfter {
		h.once.Do(func() {
			h.broken(fmt.Errorf("the command failed %d times before any child answered a task (last, child %d: %w)", n, id, err))
		})
	}
}

// request is a task handed to an owner.
type request struct {
	ctx  context.Context
	task uint64      // the task's ID
	line []byte      // the task's line, '\n' included
	done chan answer // buffered 1: the owner never waits on it
}

type answer struct {
	v   any
	err error
}

// NewStdio starts cfg.Children copies of cfg.Command. It fails if the
// command cannot be started at all. Close stops the children.
func NewStdio(cfg StdioConfig) (*Stdio, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Stdio{
		cfg:      cfg,
		reqs:     make(chan *request),
		quit:     make(chan struct{}),
		stopErrs: make([]error, cfg.Children),
		health:   &stdioHealth{broken: cfg.Broken, children: cfg.Children},
	}
	children := make([]*child, cfg.Children)
	for i := range children {
		c := &child{cfg: &s.cfg, id: i + 1, health: s.health}
		if err := c.start(); err != nil {
			for _, c := range children[:i] {
				c.closeInput()
				_ = c.stopBy(time.Now())
			}
			return nil, err
		}
		c.holds.Store(1)
		children[i] = c
	}
	s.children = children
	for i, c := range children {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.stopErrs[i] = c.own(s.reqs, s.quit)
		}()
	}
	return s, nil
}

// Slots is the most tasks the children can hold at once, running or
// written ahead: give Config.Concurrency this, and Config.Capacity
// Capacity, so that a child that answers finds its next tasks waiting.
func (s *Stdio) Slots() int { return s.cfg.Children * s.cfg.Pipeline }

// Capacity is how many tasks the children hold at once now: one each, and
// as many as a child that asked for tasks ahead answers in a couple of
// milliseconds (at most Pipeline). Tasks beyond it would wait for a
// child, in this worker, while another worker might be idle.
func (s *Stdio) Capacity() int {
	n := 0
	for _, c := range s.children {
		n += int(c.holds.Load())
	}
	return n
}

// Handle is the Handler: it runs t on a free child. When ctx ends first
// it returns at once; the child's answer, if it comes, is dropped.
func (s *Stdio) Handle(ctx context.Context, t Task) (any, error) {
	line, err := stdioInput(t, nil, s.cfg.Envelope)
	if err != nil {
		return nil, NoRetry(err) // no child sees it; every attempt would fail alike
	}
	r := &request{ctx: ctx, task: t.ID, line: line, done: make(chan answer, 1)}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-s.quit:
		return nil, errStdioClosed
	}
	select {
	case a := <-r.done:
		return a.v, a.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// errStdioClosed fails a task handed to a closed Stdio.
var errStdioClosed = errors.New("stdio children stopped")

// Close stops the children: it closes their stdin, which asks them to
// exit, and kills those still running after StopTimeout. Call it after
// Run has returned, when no handler waits for a child.
func (s *Stdio) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		s.wg.Wait()
		s.closeErr = errors.Join(s.stopErrs...)
	})
	return s.closeErr
}

// childRestartError is a child that had to be stopped; the attempt it held
// fails with it.
func childRestartError(id int, what string, tail string) error {
	if tail == "" {
		return fmt.Errorf("child %d %s", id, what)
	}
	return fmt.Errorf("child %d %s: %s", id, what, tail)
}
