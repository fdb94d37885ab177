// Package cliflag holds the flag value types both command-line tools use.
package cliflag

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// LogLevel is a flag value naming a slog level: debug, info, warn or error.
type LogLevel struct{ slog.Level }

// Set implements pflag.Value.
func (l *LogLevel) Set(s string) error {
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	return nil
}

func (l *LogLevel) String() string { return strings.ToLower(l.Level.String()) }

// Type implements pflag.Value.
func (l *LogLevel) Type() string { return "level" }

// Enum is a flag value that must be one of a fixed set of words.
type Enum struct {
	value   string
	allowed []string
}

// NewEnum returns an Enum set to def that accepts the allowed words.
func NewEnum(def string, allowed ...string) *Enum {
	return &Enum{value: def, allowed: allowed}
}

// Set implements pflag.Value.
func (e *Enum) Set(s string) error {
	for _, a := range e.allowed {
		if s == a {
			e.value = s
			return nil
		}
	}
	return fmt.Errorf("want %s", strings.Join(e.allowed, " or "))
}

func (e *Enum) String() string { return e.value }

// Type implements pflag.Value.
func (e *Enum) Type() string { return strings.Join(e.allowed, "|") }

// Exit codes of both tools.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// UsageError is a mistake in the command line: a bad flag, a missing or
// conflicting argument, a value out of range. It exits with ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a *UsageError with a formatted message.
func Usagef(format string, args ...any) error {
	return &UsageError{fmt.Errorf(format, args...)}
}
