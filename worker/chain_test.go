package worker_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// metricCounts reads counters from the master's /metrics: requests by op
// (as "op/get", ...) and the chained requests (as "chained").
func metricCounts(t *testing.T, url string) map[string]int {
	t.Helper()
	req, err := http.NewRequest("GET", url+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+string(qmtest.Authkey))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	counts := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		const prefix = `qm_request_duration_seconds_count{op="`
		line := sc.Text()
		name, n := "", ""
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			var op string
			op, n, _ = strings.Cut(rest, `"} `)
			name = "op/" + op
		} else if rest, ok := strings.CutPrefix(line, "qm_chained_requests_total "); ok {
			name, n = "chained", rest
		} else {
			continue
		}
		v, err := strconv.ParseFloat(n, 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		counts[name] = int(v)
	}
	return counts
}

// A busy worker sends each result with its next get: one round trip per
// task, not two. The master counts the ops it answered.
func TestResultsRideOnGets(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const n = 200
	items := make([]any, n)
	for i := range items {
		items[i] = i
	}
	put(t, c, "tasks", items, wire.PutOptions{})
	cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) { return task.Value() })
	cfg.Logger = nil     // 200 tasks of debug logs say nothing here
	cfg.MaxPrefetch = -1 // one task per get, so that every result can ride on one
	startWorker(t, cfg)
	if got := len(results(t, c, "results", n, 10*time.Second)); got != n {
		t.Fatalf("%d results, want %d", got, n)
	}
	m := metricCounts(t, url)
	// With one task at a time, every result goes with the worker's next
	// get: a complete on its own would be a second round trip.
	if m["chained"] < n || m["op/complete"] != m["chained"] {
		t.Fatalf("master counted %d chained requests and %d completes for %d tasks: want every complete chained to a get",
			m["chained"], m["op/complete"], n)
	}
}

// A worker cancelled while its get (carrying results) waits at the master
// loses no result: the results were delivered with the get, or are sent
// again, and none twice.
func TestDrainDuringChainedGet(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"a"}, wire.PutOptions{})
	cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) { return "done", nil })
	cfg.GetTimeout = 10 * time.Second // the chained get waits at the master until cancelled
	w := startWorker(t, cfg)
	r := results(t, c, "results", 1, 5*time.Second)[0]
	if r.TaskID != ids[0] || value(t, r) != "done" {
		t.Fatalf("result %+v, want task %d done", r, ids[0])
	}
	begin := time.Now()
	w.cancel()
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Run took %s to return after cancel: the blocked get should end at once", took)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Ready != 0 || st.Leased != 0 || st.Done != 1 {
			return fmt.Errorf("tasks queue %+v: want 1 done, nothing else", st)
		}
		return nil
	})
	if more, err := c.Get(context.Background(), "results", wire.GetOptions{Max: 10, NoAck: true}); err != nil || len(more) != 0 {
		t.Fatalf("results beyond the one: %v, %v", more, err)
	}
}
