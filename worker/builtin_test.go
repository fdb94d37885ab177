package worker_test

import (
	"context"
	"errors"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

func task(t *testing.T, payload any) worker.Task {
	t.Helper()
	b, err := wire.Encode(payload)
	if err != nil {
		t.Fatal(err)
	}
	return worker.Task{ID: 7, Queue: "tasks", Payload: b, Attempt: 1}
}

func TestSquare(t *testing.T) {
	h := mustBuiltin(t, "square")
	for _, tt := range []struct {
		name    string
		payload any
		want    any
		err     string
	}{
		{"int", 12, int64(144), ""},
		{"negative", -3, int64(9), ""},
		{"zero", 0, int64(0), ""},
		{"largest", math.MaxInt32, int64(math.MaxInt32) * math.MaxInt32, ""},
		{"overflow", int64(1) << 32, nil, "overflows"},
		{"min int", int64(math.MinInt64), nil, "overflows"},
		{"uint", uint64(1) << 31, int64(1) << 62, ""},
		{"float", 1.5, 2.25, ""},
		{"int string", "12", int64(144), ""},
		{"float string", " 0.5 ", 0.25, ""},
		{"bytes", []byte("3"), int64(9), ""},
		{"word", "abc", nil, `want a number, got the string "abc"`},
		{"null", nil, nil, "want a number, got null"},
		{"bool", true, nil, "got the boolean true"},
		{"list", []any{1}, nil, "got a list"},
		{"map", map[string]any{"n": 1}, nil, "got a map"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h(context.Background(), task(t, tt.payload))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "square: ") {
					t.Fatalf("square(%v) = %v, %v; want error %q", tt.payload, got, err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("square(%v) = %#v, %v; want %#v", tt.payload, got, err, tt.want)
			}
		})
	}
}

func TestEchoRefusesMalformed(t *testing.T) {
	for _, bad := range [][]byte{{0x92, 0x01}, {0x01, 0x02}, {0xc1}, {0xd9, 0x05, 'a'}} {
		if _, err := mustBuiltin(t, "echo")(context.Background(), wire.Task{ID: 1, Payload: bad}); err == nil {
			t.Errorf("echo of malformed payload %x: no error", bad)
		}
	}
}

func TestEcho(t *testing.T) {
	in := map[string]any{"a": []any{int64(1), "two"}, "b": nil}
	got, err := mustBuiltin(t, "echo")(context.Background(), task(t, in))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := wire.Encode(got)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := wire.DecodeValue(raw); err != nil || !reflect.DeepEqual(v, in) {
		t.Fatalf("echo gave %#v, %v; want %#v", v, err, in)
	}
}

func TestSleep(t *testing.T) {
	h := mustBuiltin(t, "sleep")
	begin := time.Now()
	if _, err := h(context.Background(), task(t, 0.05)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < 50*time.Millisecond {
		t.Errorf("slept %s, want 50ms", took)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	begin = time.Now()
	_, err := h(ctx, task(t, 30))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(begin) > 2*time.Second {
		t.Fatalf("sleep(30) under a 50ms ctx = %v after %s", err, time.Since(begin))
	}
	for _, bad := range []any{"soon", -1, []any{}} {
		if _, err := h(context.Background(), task(t, bad)); err == nil || !strings.HasPrefix(err.Error(), "sleep: ") {
			t.Errorf("sleep(%v) = %v, want a sleep: error", bad, err)
		}
	}
}

func TestFail(t *testing.T) {
	_, err := mustBuiltin(t, "fail")(context.Background(), task(t, 1))
	if err == nil || err.Error() != "fail: always fails" {
		t.Fatalf("fail = %v", err)
	}
}

func TestBuiltinNames(t *testing.T) {
	names := worker.BuiltinNames()
	for _, want := range []string{"echo", "fail", "sleep", "square"} {
		if !slices.Contains(names, want) {
			t.Errorf("BuiltinNames() = %v, missing %s", names, want)
		}
		if worker.BuiltinHelp(want) == "" {
			t.Errorf("no help for %s", want)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("BuiltinNames() = %v, not sorted", names)
	}
	_, err := worker.Builtin("cube")
	if !errors.Is(err, worker.ErrUnknownBuiltin) || !strings.Contains(err.Error(), `"cube"`) || !strings.Contains(err.Error(), "square") {
		t.Fatalf("Builtin(cube) = %v, want ErrUnknownBuiltin naming it and the known ones", err)
	}
}
