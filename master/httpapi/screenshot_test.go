package httpapi_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// TestDashboardScreenshot writes a screenshot of the dashboard of a busy
// master to the file QM_SCREENSHOT names (docs/dashboard.png for the
// README); it runs only when that is set, for about QM_SCREENSHOT_RUN
// (default 90s) of load:
//
//	QM_SCREENSHOT=$PWD/docs/dashboard.png go test -run Screenshot ./master/httpapi/
func TestDashboardScreenshot(t *testing.T) {
	out := os.Getenv("QM_SCREENSHOT")
	if out == "" {
		t.Skip("set QM_SCREENSHOT=FILE.png to take the README's screenshot")
	}
	chromiumPath(t)
	run := 90 * time.Second
	if s := os.Getenv("QM_SCREENSHOT_RUN"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		run = d
	}
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxAttempts: 2, DashboardSampleEvery: 2 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	dial := func(role, name string) *wire.Client {
		c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: qmtest.Authkey, Role: role, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	type load struct {
		queue     string
		perSecond float64       // puts
		work      time.Duration // mean time per task
		failRate  float64
		workers   int
	}
	loads := []load{
		{"thumbnails", 14, 250 * time.Millisecond, 0.02, 4},
		{"emails", 6, 400 * time.Millisecond, 0.12, 2},
		{"reports", 1.5, 2 * time.Second, 0.05, 2},
	}
	errs := []string{
		"smtp: 450 mailbox unavailable", "timeout after 30s talking to render-2",
		"KeyError: 'customer_id'", "exit status 137 (out of memory)",
	}
	n := 0
	for _, l := range loads {
		p := dial("producer", fmt.Sprintf("%s-feeder@app-1", l.queue))
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				// A rate that swells and ebbs, so the charts show something.
				phase := float64(time.Now().UnixMilli()%20000) / 20000
				rate := l.perSecond * (0.5 + phase)
				if _, err := p.Put(ctx, l.queue, []any{map[string]any{"job": i, "queue": l.queue}}, wire.PutOptions{}); err != nil {
					return
				}
				sleep(ctx, time.Duration(float64(time.Second)/rate))
			}
		})
		for range l.workers {
			n++
			w := dial("worker", fmt.Sprintf("qworker %d@node-%d", 4000+n, 1+n%3))
			wg.Go(func() {
				for ctx.Err() == nil {
					ts, err := w.Get(ctx, l.queue, wire.GetOptions{Timeout: time.Second})
					if err != nil {
						return
					}
					for _, task := range ts {
						sleep(ctx, time.Duration(rand.ExpFloat64()*float64(l.work)))
						var done wire.Completion
						done.ID = task.ID
						if rand.Float64() < l.failRate {
							done.Error = errs[rand.IntN(len(errs))]
						} else {
							done.Value, _ = wire.Encode("ok")
						}
						_ = w.Complete(ctx, l.queue, l.queue+".results", []wire.Completion{done})
					}
				}
			})
		}
	}
	dial("admin", "qmaster inspect (ops-laptop)")
	time.Sleep(run)
	// Pause one queue, so the page shows what that looks like.
	admin := dial("admin", "qmaster pause (ops-laptop)")
	if err := admin.Pause(ctx, "reports"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)

	b := browser(t, 1440, 1000)
	login(t, b, url)
	within(t, b, 10*time.Second, chromedp.WaitVisible(chromedp.CSS(`tr[data-dead-task]`)), chromedp.Sleep(2500*time.Millisecond))
	tctx, tcancel := context.WithTimeout(b, 20*time.Second)
	defer tcancel()
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", out, len(png))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
