package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// logLevel is a flag value naming a slog level: debug, info, warn or error.
type logLevel struct{ slog.Level }

func (l *logLevel) Set(s string) error {
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	return nil
}

func (l *logLevel) String() string { return strings.ToLower(l.Level.String()) }
func (l *logLevel) Type() string   { return "level" }

// enumValue is a flag value that must be one of a fixed set of words.
type enumValue struct {
	value   string
	allowed []string
}

func newEnum(def string, allowed ...string) *enumValue {
	return &enumValue{value: def, allowed: allowed}
}

func (e *enumValue) Set(s string) error {
	for _, a := range e.allowed {
		if s == a {
			e.value = s
			return nil
		}
	}
	return fmt.Errorf("want %s", strings.Join(e.allowed, " or "))
}

func (e *enumValue) String() string { return e.value }
func (e *enumValue) Type() string   { return strings.Join(e.allowed, "|") }
