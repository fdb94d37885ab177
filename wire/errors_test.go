package wire

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// Every code but CodeOK has one sentinel, which maps back to it, and a
// remote error of that code matches it.
func TestCodesCoverEverySentinel(t *testing.T) {
	seen := map[Code]bool{}
	for _, c := range codes {
		if seen[c.code] {
			t.Errorf("code %d listed twice", c.code)
		}
		seen[c.code] = true
		if got := CodeOf(fmt.Errorf("op: %w", c.sentinel)); got != c.code {
			t.Errorf("CodeOf(%v) = %d, want %d", c.sentinel, got, c.code)
		}
		if err := errorFromResponse(&Response{Code: c.code}); !errors.Is(err, c.sentinel) || err.Error() != c.sentinel.Error() {
			t.Errorf("remote error of code %d: %v, does not match %v", c.code, err, c.sentinel)
		}
	}
	for code := CodeInternal; code <= CodePermissionDenied; code++ {
		if !seen[code] {
			t.Errorf("code %d has no sentinel", code)
		}
	}
	if CodeOf(errors.New("other")) != CodeInternal || CodeOf(nil) != CodeInternal {
		t.Error("an error wrapping no sentinel is not CodeInternal")
	}
}

// An error wrapping two sentinels gets the same code every time, however
// it was built: the one of the documented precedence.
func TestCodeOfTwoSentinels(t *testing.T) {
	tests := []struct {
		a, b error
		want Code
	}{
		{ErrQueueFull, ErrShuttingDown, CodeShuttingDown},
		{ErrUnknownQueue, ErrBadRequest, CodeBadRequest},
		{ErrNoSuchTask, ErrNotLeased, CodeNotLeased},
		{ErrInternal, ErrQueueFull, CodeQueueFull},
		{ErrMessageTooLarge, ErrMasterFull, CodeMasterFull},
		{ErrUnknownOp, ErrTooManyStreams, CodeTooManyStreams},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v and %v", tt.a, tt.b), func(t *testing.T) {
			errs := []error{
				errors.Join(tt.a, tt.b),
				errors.Join(tt.b, tt.a),
				fmt.Errorf("%w: %w", tt.a, tt.b),
				fmt.Errorf("put: %w", errors.Join(fmt.Errorf("task 1: %w", tt.b), tt.a)),
			}
			for range 100 { // the codes were once a map, ranged in random order
				for _, err := range errs {
					if got := CodeOf(err); got != tt.want {
						t.Fatalf("CodeOf(%v) = %d, want %d", err, got, tt.want)
					}
				}
			}
		})
	}
}

// A call's write that fails on its socket (a broken pipe, before the
// session has closed) says the connection is lost, so that clients given
// several addresses move on, as for a closed session.
func TestConnectionLostOnSocketErrors(t *testing.T) {
	for _, err := range []error{
		io.EOF,
		&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("writev", syscall.EPIPE)},
		&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
		fmt.Errorf("tls: %w", &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}),
	} {
		if !connectionLost(err) {
			t.Errorf("connectionLost(%v) = false", err)
		}
	}
	if connectionLost(errors.New("bad request")) {
		t.Error("a plain error said the connection was lost")
	}
}
