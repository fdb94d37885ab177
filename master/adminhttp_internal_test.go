package master

import (
	"bytes"
	"log"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The HTTP server's error log lets one line a second through, and the
// next says how many it dropped.
func TestThrottledLog(t *testing.T) {
	var out bytes.Buffer
	l := log.New(&throttledLog{log: slog.New(slog.NewTextHandler(&out, nil)), every: logEvery{period: time.Hour}}, "", 0)
	for range 100 {
		l.Printf("http: Accept error: accept tcp: too many open files; retrying in 5ms")
	}
	if n := strings.Count(out.String(), "Accept error"); n != 1 {
		t.Fatalf("%d lines logged of 100 within the period, want 1:\n%s", n, out.String())
	}
	th := l.Writer().(*throttledLog)
	th.every.last.Store(0) // the period has passed
	l.Printf("http: Accept error: again")
	if !strings.Contains(out.String(), "http_errors_not_logged=99") {
		t.Fatalf("the line after the period does not count the 99 dropped:\n%s", out.String())
	}
}
