package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/qm-dev/qm/internal/cliflag"
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

// The exit codes and the usage error are shared with the other tool.
const (
	exitOK    = cliflag.ExitOK
	exitError = cliflag.ExitError
	exitUsage = cliflag.ExitUsage
)

type usageError = cliflag.UsageError

var usageErrorf = cliflag.Usagef

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
