package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// TestDiskFullUnderLoad: the data directory of a durable master (a 3 MiB
// tmpfs) fills up while a producer puts and two workers complete tasks.
// Puts fail with "disk full"; the workers' results are held until space
// returns rather than dropped (as they were: their tasks were acked and
// their results lost). Then the tmpfs is made larger: with the master
// still running ("live"), or after it was SIGKILLed while the disk was
// full and started again on it ("crash"). Every task whose put was
// acknowledged has a result, equal to its payload: exactly one when the
// master lived, at least one (equal duplicates, counted) after the
// crash; nothing is left leased or dead.
func TestDiskFullUnderLoad(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := map[bool]string{false: "live", true: "crash"}[crash]
		t.Run(name, func(t *testing.T) { runDiskFull(t, crash) })
	}
}

func runDiskFull(t *testing.T, crash bool) {
	dir := smallDisk(t, "3m")
	margs := []string{"--data-dir", dir, "--max-attempts", "1000"}
	m, addr := startMaster(t, margs...)
	for i := range 2 {
		start(t, nil, nil, "qworker", "--server", addr, "--builtin", "echo", "--concurrency", "2", "--lease", "2s",
			"--name", fmt.Sprintf("w%d", i+1))
	}
	c := dial(t, addr, "producer")
	pad := strings.Repeat("x", 2048)

	var (
		mu      sync.Mutex
		want    = map[uint64]string{} // acknowledged puts
		got     = map[uint64][]wire.Result{}
		items   = map[resultItem]bool{} // result items recorded
		refused int
	)
	// The consumer takes results under a lease and acks them, so that a
	// reply lost in the crash leaves them queued.
	stop := make(chan struct{})
	consumed := make(chan error, 1)
	go func() {
		cc, err := redial(nil, addr, "producer")
		if err != nil {
			consumed <- err
			return
		}
		defer func() { cc.Close() }()
		for {
			select {
			case <-stop:
				consumed <- nil
				return
			default:
			}
			ts, err := cc.Get(context.Background(), "results", wire.GetOptions{Max: 256, Timeout: 200 * time.Millisecond, Lease: 10 * time.Second})
			if err == nil && len(ts) > 0 {
				mu.Lock()
				for _, task := range ts {
					if items[itemKey(task)] {
						continue // delivered again: its ack was lost in the crash
					}
					items[itemKey(task)] = true
					if r, err := wire.DecodeResult(task.Payload); err == nil {
						got[r.TaskID] = append(got[r.TaskID], r)
					}
				}
				mu.Unlock()
				err = cc.Ack(context.Background(), "results", taskIDs(ts)...)
			}
			if err == nil {
				continue
			}
			if re := (*wire.RemoteError)(nil); errors.As(err, &re) && !errors.Is(err, wire.ErrNotLeased) {
				consumed <- fmt.Errorf("consumer: %w", err)
				return
			}
			if cc, err = redial(cc, addr, "producer"); err != nil {
				consumed <- fmt.Errorf("consumer: %w", err)
				return
			}
		}
	}()

	// Put until the disk has been full for 3 s.
	var fullSince time.Time
	for i := 0; ; i++ {
		ps := make([]any, 20)
		for j := range ps {
			ps[j] = fmt.Sprintf("%d-%d-%s", i, j, pad)
		}
		ids, err := c.Put(context.Background(), "tasks", ps, wire.PutOptions{ReplyTo: "results"})
		if err != nil {
			if !errors.Is(err, wire.ErrDiskFull) {
				t.Fatalf("put %d: %v", i, err)
			}
			refused++
			if fullSince.IsZero() {
				fullSince = time.Now()
			}
			if time.Since(fullSince) > 3*time.Second {
				break
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		mu.Lock()
		for j, id := range ids {
			want[id] = ps[j].(string)
		}
		mu.Unlock()
		if i > 20000 {
			t.Fatal("the disk never filled")
		}
	}
	logs := m.logs()
	held := strings.Count(logs, "results held until the data directory")
	if crash {
		kill(t, m)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=256m", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
	if crash {
		restartMaster(t, addr, margs...)
	}
	missing := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for id := range want {
			if len(got[id]) == 0 {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(30 * time.Second); missing() > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a late duplicate would be in by now
	close(stop)
	if err := <-consumed; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var bad []string
	dups := 0
	for id, p := range want {
		rs := got[id]
		if len(rs) == 0 || len(rs) > 1 && !crash {
			bad = append(bad, fmt.Sprintf("task %d: %d results", id, len(rs)))
			continue
		}
		if len(rs) > 1 {
			dups++
		}
		for _, r := range rs {
			if v, err := wire.DecodeValue(r.Value); r.Error != "" || err != nil || v != p {
				bad = append(bad, fmt.Sprintf("task %d: result %.20v (%v, error %q)", id, v, err, r.Error))
			}
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d of %d tasks wrong (%d puts refused with disk full over 3 s): %s",
			len(bad), len(want), refused, strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
	settled(t, dial(t, addr, "admin"), "results")
	// A put refused with "disk full" after its tasks were queued (the log
	// failed to write them) still has them run: results of tasks no
	// acknowledged put returned.
	unknown := 0
	for id := range got {
		if _, ok := want[id]; !ok {
			unknown++
		}
	}
	how := "then room made with the master running: each task exactly one result"
	if crash {
		how = fmt.Sprintf("then the master SIGKILLed, room made, the master restarted: each task at least one result, %d with two equal ones", dups)
	}
	t.Logf("%d tasks from acknowledged puts, %d puts refused with disk full over 3 s, %s; %d results of tasks from refused puts; "+
		"master log: %d 'results held' warnings",
		len(want), refused, how, unknown, held)
}

// smallDisk mounts a tmpfs of size (mount's -o size) on a directory of
// the test's, unmounted when it ends, and returns the directory. A test
// not run by root, or that cannot mount one, is skipped.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}
