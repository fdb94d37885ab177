package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qm-dev/qm/wire"
)

// builtins are the handlers Builtin knows, with a line of help each.
var builtins = map[string]struct {
	h    Handler
	help string
}{
	"square": {square, "n*n of a number, or of a string holding one; an int that would overflow is an error"},
	"echo":   {echo, "returns the payload unchanged"},
	"sleep":  {sleepTask, "sleeps for the payload's number of seconds, then returns the payload"},
	"fail":   {fail, "always fails, for testing retries and dead letters"},
}

// Builtin returns the built-in handler called name; BuiltinNames lists
// them. An unknown name gives an error wrapping ErrUnknownBuiltin.
func Builtin(name string) (Handler, error) {
	b, ok := builtins[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (have %s)", ErrUnknownBuiltin, name, strings.Join(BuiltinNames(), ", "))
	}
	return b.h, nil
}

// BuiltinNames returns the names of the built-in handlers, sorted.
func BuiltinNames() []string {
	names := make([]string, 0, len(builtins))
	for n := range builtins {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// BuiltinHelp returns a line describing the built-in handler name, or "".
func BuiltinHelp(name string) string { return builtins[name].help }

// square is the classic n*n.
func square(_ context.Context, t Task) (any, error) {
	v, err := t.Value()
	if err != nil {
		return nil, err
	}
	if s, ok := v.([]byte); ok {
		v = string(s)
	}
	if s, ok := v.(string); ok {
		n, err := parseNumber(s)
		if err != nil {
			return nil, fmt.Errorf("square: %w", err)
		}
		v = n
	}
	switch n := v.(type) {
	case int64:
		abs := uint64(n)
		if n < 0 {
			abs = -abs
		}
		hi, lo := bits.Mul64(abs, abs)
		if hi != 0 || lo > math.MaxInt64 {
			return nil, fmt.Errorf("square: %d*%d overflows a 64-bit integer", n, n)
		}
		return int64(lo), nil
	case uint64:
		hi, lo := bits.Mul64(n, n)
		if hi != 0 {
			return nil, fmt.Errorf("square: %d*%d overflows a 64-bit integer", n, n)
		}
		return lo, nil
	case float64:
		return n * n, nil
	}
	return nil, fmt.Errorf("square: want a number, got %s", describe(v))
}

// parseNumber reads an int64, else a float64, from s.
func parseNumber(s string) (any, error) {
	s = strings.TrimSpace(s)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return f, nil
	}
	return nil, fmt.Errorf("want a number, got the string %q", truncate(s, 40))
}

// describe names a payload's type for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("the boolean %t", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a map"
	}
	return fmt.Sprintf("%T", v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func echo(_ context.Context, t Task) (any, error) {
	// Refuse what is not one msgpack value, without decoding it.
	if err := wire.CheckPayload(t.Payload); err != nil {
		return nil, err
	}
	return t.Payload, nil
}

// sleepTask sleeps for the payload's seconds, or until ctx ends.
func sleepTask(ctx context.Context, t Task) (any, error) {
	v, err := t.Value()
	if err != nil {
		return nil, err
	}
	var secs float64
	switch n := v.(type) {
	case int64:
		secs = float64(n)
	case uint64:
		secs = float64(n)
	case float64:
		secs = n
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
		if err != nil {
			return nil, fmt.Errorf("sleep: want seconds as a number, got the string %q", truncate(n, 40))
		}
		secs = f
	default:
		return nil, fmt.Errorf("sleep: want seconds as a number, got %s", describe(v))
	}
	if secs < 0 || math.IsNaN(secs) || secs > math.MaxInt64/float64(time.Second) {
		return nil, fmt.Errorf("sleep: %v seconds is out of range", secs)
	}
	timer := time.NewTimer(time.Duration(secs * float64(time.Second)))
	defer timer.Stop()
	select {
	case <-timer.C:
		return t.Payload, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("sleep: %w", context.Cause(ctx))
	}
}

func fail(context.Context, Task) (any, error) {
	return nil, errors.New("fail: always fails")
}
