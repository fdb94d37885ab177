package e2e

import (
	"context"
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
// their results lost). Once the tmpfs is made larger every task whose put
// was acknowledged has exactly one result, equal to its payload, and
// nothing is left leased or dead.
func TestDiskFullUnderLoad(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	m, addr := startMaster(t, "--data-dir", dir, "--max-attempts", "1000")
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
		refused int
	)
	stop := make(chan struct{})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		cc := dial(t, addr, "producer")
		for {
			select {
			case <-stop:
				return
			default:
			}
			ts, err := cc.Get(context.Background(), "results", wire.GetOptions{Max: 256, Timeout: 200 * time.Millisecond, NoAck: true})
			if err != nil {
				return
			}
			mu.Lock()
			for _, task := range ts {
				r, err := wire.DecodeResult(task.Payload)
				if err == nil {
					got[r.TaskID] = append(got[r.TaskID], r)
				}
			}
			mu.Unlock()
		}
	}()

	// Put until the disk has been full for a while, then make room.
	var fullSince time.Time
	for i := 0; ; i++ {
		ps := make([]any, 20)
		for j := range ps {
			ps[j] = fmt.Sprintf("%d-%d-%s", i, j, pad)
		}
		ids, err := c.Put(context.Background(), "tasks", ps, wire.PutOptions{ReplyTo: "results"})
		if err != nil {
			if !strings.Contains(err.Error(), "disk full") {
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
	if out, err := exec.Command("mount", "-o", "remount,size=256m", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
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
	close(stop)
	<-consumed
	mu.Lock()
	defer mu.Unlock()
	var bad []string
	for id, p := range want {
		rs := got[id]
		if len(rs) != 1 || rs[0].Error != "" {
			bad = append(bad, fmt.Sprintf("task %d: %d results %+v", id, len(rs), rs))
			continue
		}
		if v, err := wire.DecodeValue(rs[0].Value); err != nil || v != p {
			bad = append(bad, fmt.Sprintf("task %d: result %.20v (%v)", id, v, err))
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d of %d tasks wrong (%d puts refused with disk full over 3 s, %d 'publish results' errors logged): %s",
			len(bad), len(want), refused, strings.Count(m.logs(), `msg="publish results"`), strings.Join(bad[:min(len(bad), 10)], "\n"))
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
	logs := m.logs()
	t.Logf("%d tasks from acknowledged puts, %d puts refused with disk full over 3 s, then room made: each task exactly one result; "+
		"%d results of tasks from puts refused; master log: %d 'results held' warnings, %d 'queued, not yet written'",
		len(want), refused, unknown, strings.Count(logs, "results held until the data directory"), strings.Count(logs, "queued, not yet written"))
}
