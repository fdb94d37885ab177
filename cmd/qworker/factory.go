package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// factory is what the command takes from the process: its output streams
// and environment. Tests fill one in with buffers.
type factory struct {
	Out    io.Writer
	ErrOut io.Writer
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
}

func newFactory() *factory {
	return &factory{Out: os.Stdout, ErrOut: os.Stderr, Getenv: os.Getenv}
}

func (f *factory) getenv(key string) string {
	if f.Getenv == nil {
		return os.Getenv(key)
	}
	return f.Getenv(key)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError is a mistake in the command line: a bad flag, a missing or
// conflicting option. It exits with exitUsage.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// exitCode reports err on w and returns the process exit code.
func exitCode(w io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "qworker: %v\nRun 'qworker --help' for usage.\n", err)
		return exitUsage
	}
	fmt.Fprintf(w, "qworker: %v\n", err)
	return exitError
}
