package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/wire"
)

// dial connects a wire client to the master at addr.
func dial(t *testing.T, addr, role string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(authkey), Role: role})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// contents returns the string payloads of every ready task in the named
// queues, with how many times each occurs.
func contents(t *testing.T, c *wire.Client, queues ...string) map[string]int {
	t.Helper()
	got := make(map[string]int)
	for _, q := range queues {
		ts, err := c.Peek(context.Background(), q, 1<<20)
		if err != nil && !errors.Is(err, wire.ErrUnknownQueue) {
			t.Fatalf("peek %s: %v", q, err)
		}
		for _, task := range ts {
			v, err := task.Value()
			if err != nil {
				t.Fatalf("task %d: %v", task.ID, err)
			}
			got[fmt.Sprint(v)]++
		}
	}
	return got
}

func kill(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// killRounds is how many times TestDurableKill9 kills the master:
// QM_E2E_KILLS raises it for a long run.
func killRounds(t *testing.T) int {
	if s := os.Getenv("QM_E2E_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("QM_E2E_KILLS=%q: want a positive count", s)
		}
		return n
	}
	if testing.Short() {
		return 4
	}
	return 12
}

// TestDurableKill9: producers put while workers get and ack; the master is
// SIGKILLed at a random moment, many times over. After every restart each
// put the master acknowledged is there (ready, in the queue or its
// dead-letter queue) unless a worker sent an ack for it, and no task
// whose ack the master acknowledged is there.
func TestDurableKill9(t *testing.T) {
	dir := t.TempDir()
	var (
		mu        sync.Mutex
		putAcked  = make(map[string]bool) // payloads whose put was acknowledged
		doneAcked = make(map[string]bool) // payloads whose ack was acknowledged
		ackSent   = make(map[string]bool) // payloads a worker sent an ack for
	)
	rounds := killRounds(t)
	for round := range rounds {
		m, addr := startMaster(t, "--data-dir", dir, "--max-attempts", "1000")
		check := dial(t, addr, "admin")
		got := contents(t, check, "tasks", "tasks.dead")
		mu.Lock()
		for p := range putAcked {
			// An ack sent but not answered may have been made durable.
			if !ackSent[p] && got[p] == 0 {
				t.Fatalf("round %d: acknowledged put %q is missing after the restart", round, p)
			}
		}
		for p, n := range got {
			if doneAcked[p] {
				t.Fatalf("round %d: acked task %q came back", round, p)
			}
			if n > 1 {
				t.Fatalf("round %d: task %q is there %d times", round, p, n)
			}
		}
		mu.Unlock()
		check.Close()

		var wg sync.WaitGroup
		for p := range 4 {
			wg.Go(func() {
				c, err := wire.Dial(context.Background(), wire.Config{Addr: addr, Authkey: []byte(authkey), Role: "producer"})
				if err != nil {
					return
				}
				defer c.Close()
				for n := 0; ; n++ {
					batch := 1 + n%3
					items := make([]any, batch)
					for i := range items {
						items[i] = fmt.Sprintf("r%d-p%d-%d-%d", round, p, n, i)
					}
					if _, err := c.Put(context.Background(), "tasks", items, wire.PutOptions{}); err != nil {
						return // the master is gone
					}
					mu.Lock()
					for _, it := range items {
						putAcked[it.(string)] = true
					}
					mu.Unlock()
				}
			})
		}
		for range 2 {
			wg.Go(func() {
				c, err := wire.Dial(context.Background(), wire.Config{Addr: addr, Authkey: []byte(authkey), Role: "worker"})
				if err != nil {
					return
				}
				defer c.Close()
				for {
					ts, err := c.Get(context.Background(), "tasks", wire.GetOptions{Max: 4, Timeout: 100 * time.Millisecond})
					if err != nil {
						return
					}
					ids := make([]uint64, len(ts))
					for i, task := range ts {
						ids[i] = task.ID
					}
					if len(ids) == 0 {
						continue
					}
					mu.Lock()
					for _, task := range ts {
						v, _ := task.Value()
						ackSent[fmt.Sprint(v)] = true
					}
					mu.Unlock()
					if err := c.Ack(context.Background(), "tasks", ids...); err != nil {
						return
					}
					mu.Lock()
					for _, task := range ts {
						v, _ := task.Value()
						doneAcked[fmt.Sprint(v)] = true
					}
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Duration(20+rand.IntN(300)) * time.Millisecond)
		kill(t, m)
		wg.Wait()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(putAcked) == 0 || len(doneAcked) == 0 {
		t.Fatalf("%d puts and %d acks acknowledged over %d rounds: the test did nothing", len(putAcked), len(doneAcked), rounds)
	}
	t.Logf("%d kills: %d puts and %d acks acknowledged", rounds, len(putAcked), len(doneAcked))
}

// lastSegment returns the newest log segment of dir.
func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "log-*"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no log segment in %s: %v", dir, err)
	}
	slices.Sort(segs)
	return segs[len(segs)-1]
}

// putN puts n tasks "t1".."tn" into queue tasks, one put each.
func putN(t *testing.T, addr string, n int) {
	t.Helper()
	c := dial(t, addr, "producer")
	for i := 1; i <= n; i++ {
		if _, err := c.Put(context.Background(), "tasks", []any{fmt.Sprint("t", i)}, wire.PutOptions{}); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	c.Close()
}

// TestDurableTornTail: a log cut in the middle of its last record (a crash
// mid-write) loses that record only; the master says what it dropped.
func TestDurableTornTail(t *testing.T) {
	dir := t.TempDir()
	m, addr := startMaster(t, "--data-dir", dir)
	putN(t, addr, 100)
	kill(t, m)
	seg := lastSegment(t, dir)
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, fi.Size()-3); err != nil {
		t.Fatal(err)
	}
	m2, addr2 := startMaster(t, "--data-dir", dir)
	got := contents(t, dial(t, addr2, "admin"), "tasks")
	if len(got) != 99 || got["t99"] != 1 || got["t100"] != 0 {
		t.Fatalf("after a torn tail: %d tasks (t99 %d, t100 %d); want t1..t99", len(got), got["t99"], got["t100"])
	}
	if logs := m2.logs(); !strings.Contains(logs, "torn tail") || !strings.Contains(logs, seg) {
		t.Errorf("the master did not log the dropped tail of %s:\n%s", seg, logs)
	}
}

// TestDurableCorruptMiddle: damage in a segment that is not the newest is
// an error naming the file, and the master does not start.
func TestDurableCorruptMiddle(t *testing.T) {
	dir := t.TempDir()
	m, addr := startMaster(t, "--data-dir", dir)
	putN(t, addr, 50)
	kill(t, m)
	seg := lastSegment(t, dir)
	m, _ = startMaster(t, "--data-dir", dir) // starts a newer segment
	kill(t, m)
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "", "--addr", "127.0.0.1:0", "--data-dir", dir)
	if code == 0 || !strings.Contains(stderr, "corrupt") || !strings.Contains(stderr, seg) {
		t.Fatalf("exit %d, stderr %q: want a failure naming %s as corrupt", code, stderr, seg)
	}
}

// TestDurableLocked: a second master on a held data dir is refused.
func TestDurableLocked(t *testing.T) {
	dir := t.TempDir()
	startMaster(t, "--data-dir", dir)
	_, stderr, code := run(t, "", "--addr", "127.0.0.1:0", "--data-dir", dir)
	if code == 0 || !strings.Contains(stderr, filepath.Join(dir, "LOCK")) || !strings.Contains(stderr, "in use") {
		t.Fatalf("second master: exit %d, stderr %q; want a refusal naming the lock file", code, stderr)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// TestDurableSpaceReclaim: the space of acked tasks is given back while
// the master runs; a drained queue leaves almost nothing on disk.
func TestDurableSpaceReclaim(t *testing.T) {
	dir := t.TempDir()
	_, addr := startMaster(t, "--data-dir", dir, "--fsync", "never")
	c := dial(t, addr, "producer")
	item := strings.Repeat("x", 4096)
	for range 100 {
		items := make([]any, 40)
		for i := range items {
			items[i] = item
		}
		if _, err := c.Put(context.Background(), "tasks", items, wire.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if s := dirSize(t, dir); s < 15<<20 {
		t.Fatalf("data dir holds %d bytes after 4000 puts of 4 KiB", s)
	}
	for {
		ts, err := c.Get(context.Background(), "tasks", wire.GetOptions{Max: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 0 {
			break
		}
		ids := make([]uint64, len(ts))
		for i, task := range ts {
			ids[i] = task.ID
		}
		if err := c.Ack(context.Background(), "tasks", ids...); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 15*time.Second, func() bool { return dirSize(t, dir) < 256<<10 })
}

// TestDurableDiskFull: on a full disk puts fail with "disk full", nothing
// stored is lost, and puts work again once there is space.
func TestDurableDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	m, addr := startMaster(t, "--data-dir", dir)
	c := dial(t, addr, "producer")
	// A map's tasks and its result queue, made before the disk fills.
	if _, err := c.Put(context.Background(), "rq", []any{"made"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(context.Background(), "jobs", []any{1, 2}, wire.PutOptions{ReplyTo: "rq"}); err != nil {
		t.Fatal(err)
	}
	item := strings.Repeat("y", 4096)
	var stored []string
	var putErr error
	var refused string // the put whose write failed: it must leave nothing behind
	for i := 0; i < 2000; i++ {
		p := fmt.Sprint(i, item)
		if _, putErr = c.Put(context.Background(), "tasks", []any{p}, wire.PutOptions{}); putErr != nil {
			refused = p
			break
		}
		stored = append(stored, p)
	}
	if !errors.Is(putErr, wire.ErrDiskFull) || !strings.Contains(putErr.Error(), "nothing of this put was queued") {
		t.Fatalf("puts on a 2 MiB disk: %v; want a disk full error saying nothing was queued", putErr)
	}
	if got := contents(t, c, "tasks"); got[refused] != 0 || len(got) != len(stored) {
		t.Fatalf("after the refused put the queue holds %d tasks (the refused one %d times); want the %d stored",
			len(got), got[refused], len(stored))
	}
	if _, err := c.Put(context.Background(), "tasks", []any{"more"}, wire.PutOptions{}); !errors.Is(err, wire.ErrDiskFull) {
		t.Fatalf("a put while the disk is full: %v; want disk full", err)
	}
	// A purge would be undone by a crash: it is refused too, and changes
	// nothing.
	if n, err := c.Purge(context.Background(), "tasks"); !errors.Is(err, wire.ErrDiskFull) || n != 0 {
		t.Fatalf("a purge while the disk is full: %d, %v; want disk full", n, err)
	}
	if got := contents(t, c, "tasks"); len(got) != len(stored) {
		t.Fatalf("after the refused purge the queue holds %d tasks; want the %d stored", len(got), len(stored))
	}
	// A map's clean-up on a full disk: its queue stays, its tasks are
	// cancelled all the same.
	if cancelled, err := c.DeleteCancelling(context.Background(), "rq"); !cancelled || !errors.Is(err, wire.ErrDiskFull) {
		t.Fatalf("delete with its tasks on a full disk: cancelled %v, %v; want true and disk full", cancelled, err)
	}
	if ts, err := c.Get(context.Background(), "jobs", wire.GetOptions{Max: 10}); err != nil || len(ts) != 0 {
		t.Fatalf("get of the cancelled tasks: %d, %v; want none", len(ts), err)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
	waitFor(t, 10*time.Second, func() bool {
		_, err := c.Put(context.Background(), "tasks", []any{"after"}, wire.PutOptions{})
		if err == nil {
			stored = append(stored, "after")
		}
		return err == nil
	})
	kill(t, m)
	_, addr2 := startMaster(t, "--data-dir", dir)
	got := contents(t, dial(t, addr2, "admin"), "tasks")
	for _, p := range stored {
		if got[p] == 0 {
			t.Fatalf("acknowledged put %.20q… lost after a full disk", p)
		}
	}
	if got[refused] != 0 {
		t.Fatalf("the refused put %.20q… came back after a restart", refused)
	}
}

// TestClusterNodeDataDirLocked: a node of a cluster holds its data dir as
// a lone master does: a second node, or a lone master, on it is refused,
// and a data dir that is a file is named as such.
func TestClusterNodeDataDirLocked(t *testing.T) {
	args, _ := singleNodeArgs(t)
	dir := args[1] // --data-dir's
	startMaster(t, args...)
	other := qmtest.FreeAddrs(t, 1)[0]
	for _, second := range [][]string{
		{"--addr", "127.0.0.1:0", "--data-dir", dir, "--cluster-listen", other, "--cluster-peers", other},
		{"--addr", "127.0.0.1:0", "--data-dir", dir},
	} {
		_, stderr, code := run(t, "", second...)
		if code == 0 || !strings.Contains(stderr, filepath.Join(dir, "LOCK")) || !strings.Contains(stderr, "in use") {
			t.Errorf("qmaster %s: exit %d, stderr %q; want a refusal naming the lock file", strings.Join(second, " "), code, stderr)
		}
	}
	file := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, stderr, code := run(t, "", "--addr", "127.0.0.1:0", "--data-dir", file, "--cluster-listen", other, "--cluster-peers", other)
	if code == 0 || !strings.Contains(stderr, "not a directory") || time.Since(start) > 5*time.Second {
		t.Errorf("a node on a file: exit %d after %v, stderr %q; want a prompt refusal saying not a directory", code, time.Since(start), stderr)
	}
}
