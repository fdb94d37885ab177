package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// TestSlowConsumer: the results of a busy producer pile up because its
// consumer does not read them, at a master with --max-memory and
// --max-queue-len. Results are never refused (a result refused would be
// a task done for nothing), so the result queue grows past
// --max-queue-len; what bounds it is --max-memory: the producer's puts
// are refused with "master full" while the results take the room, and
// the master's heap stays near the limit. Once the consumer reads, the
// producer's puts go in again, and every task has exactly one result.
func TestSlowConsumer(t *testing.T) {
	const (
		maxMemory = 64 << 20
		maxQueue  = 200
		payload   = 32 << 10
	)
	m, addr := startMaster(t, "--max-memory", "64MiB", "--max-queue-len", strconv.Itoa(maxQueue), "--http-addr", "127.0.0.1:0")
	haddr := httpAddr(t, m)
	for i := range 2 {
		start(t, nil, nil, "qworker", "--server", addr, "--builtin", "echo", "--concurrency", "4", "--name", fmt.Sprintf("w%d", i+1))
	}
	producer := dial(t, addr, "producer")
	pad := strings.Repeat("z", payload)

	var (
		mu          sync.Mutex
		want        = map[uint64]string{}
		full, queue int // puts refused: master full, queue full
	)
	stopPuts := make(chan struct{})
	putsDone := make(chan struct{})
	go func() {
		defer close(putsDone)
		for i := 0; ; i++ {
			select {
			case <-stopPuts:
				return
			default:
			}
			ps := make([]any, 4)
			for j := range ps {
				ps[j] = fmt.Sprintf("%d-%d-%s", i, j, pad)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			ids, err := producer.Put(ctx, "tasks", ps, wire.PutOptions{ReplyTo: "results", Timeout: 100 * time.Millisecond})
			cancel()
			mu.Lock()
			switch {
			case err == nil:
				for j, id := range ids {
					want[id] = ps[j].(string)
				}
			case errors.Is(err, wire.ErrMasterFull):
				full++
			case errors.Is(err, wire.ErrQueueFull):
				queue++
			default:
				mu.Unlock()
				t.Errorf("put: %v", err)
				return
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()

	// Nobody reads the results until puts have been refused as master
	// full for a while (a slow machine takes longer to fill the master,
	// so this waits for the refusals rather than a fixed time), or 30 s.
	var peakHeap float64
	var peakResults int
	refusals := func() int {
		mu.Lock()
		defer mu.Unlock()
		return full
	}
	for deadline := time.Now().Add(30 * time.Second); refusals() < 10 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		peakHeap = max(peakHeap, metric(t, haddr, "go_memstats_heap_alloc_bytes"))
		st, err := producer.Stats(context.Background(), "results")
		if err == nil && len(st) == 1 {
			peakResults = max(peakResults, st[0].Ready)
		}
	}
	mu.Lock()
	fullBefore, putBefore := full, len(want)
	mu.Unlock()

	// Then the consumer reads, until the producer has put 40 more tasks.
	consumer := dial(t, addr, "producer")
	got := map[uint64][]wire.Result{}
	// read takes results until none came for quiet, or after one get if
	// once.
	read := func(quiet time.Duration, once bool) int {
		n := 0
		for {
			ts, err := consumer.Get(context.Background(), "results", wire.GetOptions{Max: 256, Timeout: quiet, NoAck: true})
			if err != nil {
				t.Fatalf("consumer: %v", err)
			}
			if len(ts) == 0 {
				return n
			}
			for _, task := range ts {
				r, err := wire.DecodeResult(task.Payload)
				if err != nil {
					t.Fatalf("result %d: %v", task.ID, err)
				}
				got[r.TaskID] = append(got[r.TaskID], r)
			}
			n += len(ts)
			if once {
				return n
			}
		}
	}
	putsAgain := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(want) - putBefore
	}
	for deadline := time.Now().Add(10 * time.Second); putsAgain() < 40 && time.Now().Before(deadline); {
		read(50*time.Millisecond, true)
	}
	close(stopPuts)
	<-putsDone
	mu.Lock()
	defer mu.Unlock()
	putAfter := len(want) - putBefore
	for deadline := time.Now().Add(30 * time.Second); ; {
		read(300*time.Millisecond, false)
		missing := 0
		for id := range want {
			if len(got[id]) == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d tasks without a result 30s after the consumer began", missing, len(want))
		}
	}
	for id, p := range want {
		rs := got[id]
		if len(rs) != 1 || rs[0].Error != "" {
			t.Fatalf("task %d: %d results %+v", id, len(rs), rs)
		}
		if v, err := wire.DecodeValue(rs[0].Value); err != nil || v != p {
			t.Fatalf("task %d: result %.20v (%v)", id, v, err)
		}
	}
	settled(t, consumer)
	if fullBefore == 0 {
		t.Errorf("no put refused with master full in 30 s while %d results piled up (heap peak %.0f MiB)", peakResults, peakHeap/(1<<20))
	}
	if putAfter == 0 {
		t.Errorf("no put went in once the consumer read")
	}
	if peakHeap > 2*maxMemory {
		t.Errorf("master heap peaked at %.0f MiB with --max-memory %d MiB", peakHeap/(1<<20), maxMemory>>20)
	}
	t.Logf("unread: up to %d results queued (--max-queue-len %d applies to puts, not results), master heap at most %.0f MiB (--max-memory %d MiB), "+
		"%d puts refused as master full, %d as queue full; once read: %d more tasks put; %d tasks of %d KiB, each exactly one result",
		peakResults, maxQueue, peakHeap/(1<<20), maxMemory>>20, fullBefore, queue, putAfter, len(want), payload>>10)
}
