package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// TestE2ESchedule runs a user's session with delayed, prioritised and
// idempotent puts and a retry policy against a master with --data-dir,
// killed with SIGKILL and started again halfway: all of it survives.
func TestE2ESchedule(t *testing.T) {
	dir := t.TempDir()
	m := startMaster(t, "--data-dir", dir, "--fsync", "never")
	srv := []string{"--server", m.addr}
	run := func(args ...string) result {
		t.Helper()
		return mustQmaster(t, "", append(args[:1:1], append(srv, args[1:]...)...)...)
	}

	run("put", "--delay", "1h", "jobs", "later")
	run("put", "jobs", "plain")
	run("put", "--priority", "9", "jobs", "urgent")
	put := run("put", "--key", "order-17", "--ids", "jobs", "order")
	first := put.stdout
	if put.stderr != "put 1 item into jobs\n" {
		t.Fatalf("a put with a new key said %q", put.stderr)
	}
	repeated := `put nothing into jobs: an item with key "order-17" is stored already (within the master's --dedup-window)` + "\n"
	if again := run("put", "--key", "order-17", "--ids", "jobs", "order again"); again.stdout != first || first == "" || again.stderr != repeated {
		t.Fatalf("a put repeated with its key printed id %q and said %q; want the first's %q and %q", again.stdout, again.stderr, first, repeated)
	}
	if r := run("config", "jobs", "--max-attempts", "5", "--retry-backoff", "1s..1m"); r.stdout != "jobs: max-attempts 5, retry-backoff 1s..1m0s\n" {
		t.Fatalf("config printed %q", r.stdout)
	}

	// A crash, then a restart on the same directory.
	m.kill()
	m = startMaster(t, "--data-dir", dir)
	srv = []string{"--server", m.addr}

	var delayed struct {
		Payload string    `json:"payload"`
		Due     time.Time `json:"due"`
	}
	r := run("peek", "--delayed", "jobs")
	if err := json.Unmarshal([]byte(r.stdout), &delayed); err != nil || delayed.Payload != "later" || time.Until(delayed.Due) < 50*time.Minute {
		t.Fatalf("peek --delayed after the restart: %q (%v); want later, due in about 1h", r.stdout, err)
	}
	if again := run("put", "--key", "order-17", "--ids", "jobs", "order after restart"); again.stdout != first || again.stderr != repeated {
		t.Fatalf("after the restart a put repeated with its key printed id %q and said %q; want the first's %q and %q", again.stdout, again.stderr, first, repeated)
	}
	if r := run("config", "jobs"); r.stdout != "jobs: max-attempts 5, retry-backoff 1s..1m0s\n" {
		t.Fatalf("config after the restart printed %q", r.stdout)
	}
	r = run("inspect", "--json")
	var stats []wire.QueueStats
	if err := json.Unmarshal([]byte(r.stdout), &stats); err != nil || len(stats) != 1 ||
		stats[0].Ready != 3 || stats[0].Delayed != 1 || stats[0].MaxAttempts != 5 || stats[0].BackoffMax != time.Minute {
		t.Fatalf("inspect --json after the restart: %s (%v)", r.stdout, err)
	}
	if r := run("get", "-n", "10", "jobs"); r.stdout != "\"urgent\"\n\"plain\"\n\"order\"\n" {
		t.Fatalf("get printed %q; want urgent, plain, order (not the delayed task)", r.stdout)
	}
	if r := run("requeue", "--now", "--all", "jobs"); !strings.Contains(r.stderr, "made 1 delayed task of jobs ready") {
		t.Fatalf("requeue --now: %q", r.stderr)
	}
	if r := run("get", "jobs"); r.stdout != "\"later\"\n" {
		t.Fatalf("get after requeue --now printed %q", r.stdout)
	}
}

// TestE2EScheduleBadFlags: bad scheduling flags are usage errors that
// name the flag, and change nothing.
func TestE2EScheduleBadFlags(t *testing.T) {
	m := startMaster(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"put", "--priority", "10", "q", "x"}, "--priority must be 0 to 9"},
		{[]string{"put", "--delay", "-1s", "q", "x"}, "--delay must not be negative"},
		{[]string{"put", "--delay", "1s", "--at", "2026-12-24T10:00:00Z", "q", "x"}, "not both"},
		{[]string{"put", "--delay", "0s", "--at", "2026-12-24T10:00:00Z", "q", "x"}, "not both"},
		{[]string{"put", "--at", "tomorrow", "q", "x"}, "RFC 3339"},
		{[]string{"put", "--key", "k", "q", "x", "y"}, "exactly one ITEM"},
		{[]string{"put", "--key", strings.Repeat("k", 257), "q", "x"}, "at most 256 bytes"},
		{[]string{"config", "q", "--retry-backoff", "1h..1s"}, "MAX >= MIN"},
		{[]string{"config", "q", "--max-attempts", "0"}, "--max-attempts must be 1 to"},
	} {
		r := qmaster(t, "", nil, append(c.args, "--server", m.addr)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("qmaster %s: exit %d, stderr %q; want 2 and %q", strings.Join(c.args, " "), r.code, r.stderr, c.want)
		}
	}
	if r := mustQmaster(t, "", "queues", "--server", m.addr); r.stdout != "" {
		t.Errorf("refused commands made queues: %q", r.stdout)
	}
	// A past --at runs at once.
	mustQmaster(t, "", "put", "--server", m.addr, "--at", "2020-01-01T00:00:00Z", "q", "x")
	if r := mustQmaster(t, "", "get", "--server", m.addr, "q"); r.stdout != "\"x\"\n" {
		t.Errorf("a put --at in the past: get printed %q", r.stdout)
	}
}
