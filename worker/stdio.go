package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/qm-dev/qm/wire"
)

// StdioConfig configures Stdio. Zero values mean the defaults.
type StdioConfig struct {
	// Command is the program to run, then its arguments; no shell.
	// Required.
	Command []string
	// Children is how many copies of Command run; default 1. Give
	// Config.Concurrency the same number: a handler that finds every
	// child busy waits for one.
	Children int
	// TaskTimeout fails the attempt of a child that has not answered its
	// task within this long, and kills and restarts the child; zero is no
	// limit.
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
}

// Validate reports the first invalid field of c, by name.
func (c *StdioConfig) Validate() error {
	switch {
	case len(c.Command) == 0 || c.Command[0] == "":
		return errors.New("stdio config: Command is required")
	case c.Children < 0:
		return errors.New("stdio config: Children must not be negative")
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

// Stdio runs tasks through long-lived child processes that speak the
// line protocol of docs/WORKERS.md: a task's payload as one line of JSON
// on the child's stdin, its result as one line of JSON on the child's
// stdout, or "!error TEXT" to fail the attempt.
//
// A child is used by one handler at a time, which owns it while it runs
// a task: it writes the task, reads the answer and, if the child exited,
// hung past TaskTimeout or broke the protocol, stops it and fails the
// attempt; the next handler to take that child restarts it, after a
// backoff. Each child has one goroutine of its own, which logs its stderr
// and keeps the end of it for errors.
type Stdio struct {
	cfg  StdioConfig
	free chan *child // the children no handler holds

	closeOnce sync.Once
	closeErr  error
}

// NewStdio starts cfg.Children copies of cfg.Command. It fails if the
// command cannot be started at all. Close stops the children.
func NewStdio(cfg StdioConfig) (*Stdio, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Stdio{cfg: cfg, free: make(chan *child, cfg.Children)}
	for i := range cfg.Children {
		c := &child{cfg: &s.cfg, id: i + 1}
		if err := c.start(); err != nil {
			_ = s.Close()
			return nil, err
		}
		s.free <- c
	}
	return s, nil
}

// Handle is the Handler: it runs t on a free child.
func (s *Stdio) Handle(ctx context.Context, t Task) (any, error) {
	var c *child
	select {
	case c = <-s.free:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { s.free <- c }()
	return c.run(ctx, t)
}

// Close stops the children: it closes their stdin, which asks them to
// exit, and kills those still running after StopTimeout. Call it after
// Run has returned, when no handler holds a child.
func (s *Stdio) Close() error {
	s.closeOnce.Do(func() {
		var all []*child
		for {
			select {
			case c := <-s.free:
				all = append(all, c)
				continue
			default:
			}
			break
		}
		for _, c := range all {
			c.closeInput()
		}
		deadline := time.Now().Add(s.cfg.StopTimeout)
		var errs []error
		for _, c := range all {
			if err := c.stopBy(deadline); err != nil {
				errs = append(errs, err)
			}
		}
		s.closeErr = errors.Join(errs...)
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
