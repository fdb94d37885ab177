package httpapi_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// stats returns the figures of queue q.
func stats(t *testing.T, c *wire.Client, q string) wire.QueueStats {
	t.Helper()
	st, err := c.Stats(ctxFor(t, 5*time.Second), q)
	if err != nil || len(st) != 1 {
		t.Fatalf("stats %s: %v %v", q, st, err)
	}
	return st[0]
}

// login signs in through the dashboard's form.
func login(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	within(t, ctx, 20*time.Second,
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), string(qmtest.Authkey)),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="1"]`)),
	)
}

// TestDashboardInBrowser loads the dashboard in a headless chromium: it
// shows a queue a test filled and its dead task, and a click (and a
// confirmation) requeues the dead task, which the master then holds
// ready again.
func TestDashboardInBrowser(t *testing.T) {
	chromiumPath(t) // skip at once without one
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxAttempts: 1, DashboardSampleEvery: 100 * time.Millisecond})
	ctx := ctxFor(t, 30*time.Second)
	c := qmtest.Dial(t, addr, "worker")
	if _, err := c.Put(ctx, "jobs", []any{"a", "b", "c", map[string]any{"n": 4}}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, "jobs", wire.GetOptions{})
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %v %v", ts, err)
	}
	dead := ts[0].ID
	if err := c.Nack(ctx, "jobs", dead, "it went wrong <b>badly</b>"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "jobs", []any{"later", "later too"}, wire.PutOptions{Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, c, "jobs"); st.Ready != 3 || st.Dead != 1 {
		t.Fatalf("before: %+v", st)
	}

	b := browser(t, 1280, 900)
	login(t, b, url)
	row := fmt.Sprintf(`tr[data-dead-task="%d"]`, dead)
	ready := text(t, b, 10*time.Second, `tr[data-queue="jobs"] td.ready`)
	errText := text(t, b, 10*time.Second, row+` td.wrap`)
	if ready != "3" {
		t.Errorf("the page shows %q ready in jobs, want 3", ready)
	}
	if delayed := text(t, b, 10*time.Second, `tr[data-queue="jobs"] td.delayed`); delayed != "2" {
		t.Errorf("the page shows %q delayed in jobs, want 2", delayed)
	}
	if errText != "it went wrong <b>badly</b>" { // as text, not markup
		t.Errorf("the dead task's error shows as %q", errText)
	}

	// Cancel first: nothing happens.
	within(t, b, 10*time.Second,
		chromedp.Click(chromedp.CSS(row+` button.requeue`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm[open]`)),
		chromedp.Click(chromedp.ID("confirm-cancel")),
		chromedp.WaitNotPresent(chromedp.CSS(`#confirm[open]`)),
	)
	time.Sleep(200 * time.Millisecond)
	if st := stats(t, c, "jobs"); st.Ready != 3 || st.Dead != 1 {
		t.Fatalf("after a cancelled requeue: %+v", st)
	}

	within(t, b, 10*time.Second,
		chromedp.Click(chromedp.CSS(row+` button.requeue`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm[open]`)),
		chromedp.Click(chromedp.ID("confirm-ok")),
		chromedp.WaitNotPresent(chromedp.CSS(row)),
	)
	st := stats(t, c, "jobs")
	if st.Ready != 4 || st.Dead != 0 {
		t.Fatalf("after the requeue: %+v, want 4 ready, 0 dead", st)
	}
	peek, err := c.Peek(ctx, "jobs", 10)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range peek {
		if p.ID == dead {
			found = true
		}
	}
	if !found {
		t.Errorf("task %d is not ready in jobs after the requeue: %v", dead, peek)
	}
	within(t, b, 10*time.Second, chromedp.WaitVisible(chromedp.ID("no-dead")))
	ready = text(t, b, 10*time.Second, `tr[data-queue="jobs"] td.ready`)
	if n, _ := strconv.Atoi(ready); n != 4 {
		t.Errorf("the page shows %q ready after the requeue, want 4", ready)
	}
}
