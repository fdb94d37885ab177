package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/qm-dev/qm/internal/cliflag"
)

// factory is what commands take from the process: the standard streams,
// the environment, and whether the streams are terminals. Tests fill one in
// with buffers.
type factory struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string

	StdinTTY, StdoutTTY, StderrTTY bool
}

func newFactory() *factory {
	return &factory{
		In:        os.Stdin,
		Out:       os.Stdout,
		ErrOut:    os.Stderr,
		Getenv:    os.Getenv,
		StdinTTY:  term.IsTerminal(int(os.Stdin.Fd())),
		StdoutTTY: term.IsTerminal(int(os.Stdout.Fd())),
		StderrTTY: term.IsTerminal(int(os.Stderr.Fd())),
	}
}

func (f *factory) getenv(key string) string {
	if f.Getenv == nil {
		return os.Getenv(key)
	}
	return f.Getenv(key)
}

// The exit codes and the usage error are shared with the other tool.
const (
	exitOK    = cliflag.ExitOK
	exitError = cliflag.ExitError
	exitUsage = cliflag.ExitUsage
)

type usageError = cliflag.UsageError

var usageErrorf = cliflag.Usagef

// connError is a failure to reach or authenticate with the master; it is
// reported as "qmaster: ..." whatever the subcommand.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// signalled is the cause of a run a signal ended.
type signalled struct{ sig os.Signal }

func (s signalled) Error() string { return "interrupted by " + s.sig.String() }

// exitCode is 128 plus the signal's number, as a shell reports a command
// the signal ended.
func (s signalled) exitCode() int {
	if n, ok := s.sig.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return exitError
}

// outputError is a failed write of a subcommand's output (stdout).
type outputError struct{ err error }

func (e *outputError) Error() string { return "write output: " + e.err.Error() }
func (e *outputError) Unwrap() error { return e.err }

// exitBrokenPipe is the exit code of a subcommand whose output's reader
// went away (| head): 128 + SIGPIPE, what a shell reports for a command
// that signal ended, which is how such commands usually end.
const exitBrokenPipe = 128 + int(syscall.SIGPIPE)

// catchBrokenPipe makes a write to stdout whose reader went away (| head)
// fail with EPIPE rather than end the process by SIGPIPE, until the func
// it returns is called: a subcommand that took items or started tasks
// then puts them back, or cancels them, before it exits (exitBrokenPipe).
func catchBrokenPipe() (stop func()) {
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	return func() { signal.Stop(pipe) }
}

// exitCode reports err on w and returns the process exit code. cmd is the
// command that ran (or failed to parse).
func exitCode(w io.Writer, cmd *cobra.Command, err error) int {
	if err == nil {
		return exitOK
	}
	var oe *outputError
	if errors.As(err, &oe) && errors.Is(oe.err, syscall.EPIPE) {
		return exitBrokenPipe // said to no one: its reader is gone
	}
	prefix := "qmaster"
	if cmd != nil {
		prefix = cmd.CommandPath()
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "%s: %v\nRun '%s --help' for usage.\n", prefix, err, prefix)
		return exitUsage
	}
	var ce *connError
	if errors.As(err, &ce) {
		prefix = "qmaster"
	}
	msg := err.Error()
	if errors.Is(err, context.Canceled) { // a signal, reported as such
		msg = strings.Replace(msg, context.Canceled.Error(), "interrupted", 1)
	}
	fmt.Fprintf(w, "%s: %s\n", prefix, msg)
	return exitError
}

// args returns a validator for between min and max positional arguments
// (max < 0: no limit) whose names, for messages, are names.
func args(min, max int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min {
			return usageErrorf("missing %s", strings.Join(names[len(args):min], " and "))
		}
		if max >= 0 && len(args) > max {
			if max == 0 && cmd.HasSubCommands() {
				return usageErrorf("unknown command %q", args[0])
			}
			return usageErrorf("unexpected argument %q", args[max])
		}
		return nil
	}
}
