package master_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// httpGet fetches url with the bearer token (none if empty) and returns
// the status and body.
func httpGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxFor(t, 10*time.Second), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestHTTPAuth(t *testing.T) {
	_, url, _ := qmtest.StartMasterHTTP(t, master.Config{HTTPToken: []byte("http-secret")})
	key := string(qmtest.Authkey)
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", http.StatusOK},
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "wrong", http.StatusUnauthorized},
		{"/metrics", key, http.StatusUnauthorized}, // a separate --http-token replaces the authkey
		{"/metrics", "http-secret", http.StatusOK},
		{"/api/state", "", http.StatusUnauthorized},
		{"/api/state", "http-secret", http.StatusOK},
		{"/", "", http.StatusUnauthorized}, // the login form
		{"/", "http-secret", http.StatusOK},
		{"/static/app.js", "", http.StatusUnauthorized},
		{"/static/app.js", "http-secret", http.StatusOK},
	} {
		t.Run(strings.TrimPrefix(tc.path, "/")+"/"+tc.token, func(t *testing.T) {
			if code, body := httpGet(t, url+tc.path, tc.token); code != tc.want {
				t.Errorf("GET %s: %d, want %d: %s", tc.path, code, tc.want, body)
			}
		})
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if code, body := httpGet(t, url+"/readyz", ""); code != http.StatusOK {
			return fmt.Errorf("readyz: %d %s", code, body)
		}
		return nil
	})
}

// TestHTTPAuthFailuresAreSlowed: wrong keys at the HTTP endpoints are
// slowed past --auth-fail-limit as at the queue port, and an address that
// holds its share of delays is refused (429) unchecked; each is counted.
// Before, 300 guesses were answered in 0.2 s. A right key is served.
func TestHTTPAuthFailuresAreSlowed(t *testing.T) {
	const delay = 200 * time.Millisecond
	_, url, _ := qmtest.StartMasterHTTP(t, master.Config{AuthFailLimit: 2, AuthFailDelay: delay, MaxUnauthConns: 4})
	key := string(qmtest.Authkey)
	for i := range 2 { // within the limit: at once
		begin := time.Now()
		if code, _ := httpGet(t, url+"/api/state", fmt.Sprint("guess", i)); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, code)
		}
		if took := time.Since(begin); took >= delay {
			t.Fatalf("guess %d within the limit took %v", i, took)
		}
	}
	begin := time.Now()
	if code, _ := httpGet(t, url+"/api/state", "guess2"); code != http.StatusUnauthorized {
		t.Fatalf("guess past the limit: %d, want 401", code)
	}
	if took := time.Since(begin); took < delay {
		t.Fatalf("a guess past the limit answered after %v, want at least %v", took, delay)
	}
	// An address holds two delays at most (MaxUnauthConns 4): of guesses
	// sent at once, those that come while two wait are refused unchecked.
	qmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		var wg sync.WaitGroup
		codes := make([]int, 6)
		for i := range codes {
			wg.Go(func() { codes[i], _ = httpGet(t, url+"/api/state", fmt.Sprint("burst", i)) })
		}
		wg.Wait()
		if !slices.Contains(codes, http.StatusTooManyRequests) {
			return fmt.Errorf("six guesses at once: %v, want a 429 among them", codes)
		}
		return nil
	})
	if code, body := httpGet(t, url+"/api/state", key); code != http.StatusOK {
		t.Fatalf("the right key: %d %s", code, body)
	}
	fams := scrape(t, url, key)
	if v, _ := metricValue(fams, "qm_http_auth_failures_total"); v < 5 {
		t.Errorf("qm_http_auth_failures_total = %v, want at least 5", v)
	}
}

// TestHTTPAuthForms: the scheme of an Authorization header is
// case-insensitive, and spaces around a key's secret (a key file may hold
// them; a header cannot) do not count.
func TestHTTPAuthForms(t *testing.T) {
	_, url, _ := qmtest.StartMasterHTTP(t, master.Config{HTTPToken: []byte("  spacey-token \t")})
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		req, err := http.NewRequestWithContext(ctxFor(t, 10*time.Second), http.MethodGet, url+"/api/state", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", scheme+" spacey-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s spacey-token: %d, want 200", scheme, resp.StatusCode)
		}
	}
}

func TestReadyzCurrentWaitsForTheCluster(t *testing.T) {
	var behind atomic.Pointer[error]
	notCurrent := errors.New("stream jobs is catching up")
	behind.Store(&notCurrent)
	_, url, _ := qmtest.StartMasterHTTP(t, master.Config{Current: func() error { return *behind.Load() }})
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if code, body := httpGet(t, url+"/readyz", ""); code != http.StatusOK {
			return fmt.Errorf("readyz: %d %s", code, body)
		}
		return nil
	})
	// Ready to serve, not yet current: only ?current says so.
	if code, body := httpGet(t, url+"/readyz?current", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "catching up") {
		t.Errorf("readyz?current while behind: %d %q; want 503 with the reason", code, body)
	}
	behind.Store(new(error))
	if code, body := httpGet(t, url+"/readyz?current", ""); code != http.StatusOK {
		t.Errorf("readyz?current once current: %d %q; want 200", code, body)
	}
}

func TestHTTPAuthkeyIsDefaultToken(t *testing.T) {
	_, url, _ := qmtest.StartMasterHTTP(t, master.Config{})
	if code, body := httpGet(t, url+"/metrics", string(qmtest.Authkey)); code != http.StatusOK {
		t.Errorf("GET /metrics with the authkey: %d: %s", code, body)
	}
}

func TestHTTPStopsWithMaster(t *testing.T) {
	srv, err := master.New(master.Config{Authkey: qmtest.Authkey})
	if err != nil {
		t.Fatal(err)
	}
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeAdmin(hln) }()
	url := "http://" + hln.Addr().String()
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if code, _ := httpGet(t, url+"/healthz", ""); code != http.StatusOK {
			return fmt.Errorf("healthz: %d", code)
		}
		return nil
	})
	// Not ready: the master serves no native listener.
	if code, body := httpGet(t, url+"/readyz", ""); code != http.StatusServiceUnavailable {
		t.Errorf("readyz without a listener: %d %s", code, body)
	}
	if err := srv.Shutdown(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, master.ErrServerClosed) {
		t.Fatalf("ServeAdmin: %v, want ErrServerClosed", err)
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Error("the HTTP endpoints still answer after Shutdown")
	}
	// A ServeAdmin after Shutdown returns at once.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.ServeAdmin(ln2); !errors.Is(err, master.ErrServerClosed) {
		t.Fatalf("ServeAdmin after Shutdown: %v", err)
	}
}

// scrape fetches /metrics and parses it.
func scrape(t *testing.T, url, token string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, url+"/metrics", token)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// metricValue returns the value of the sample of family name whose labels
// include labels (name=value pairs); ok is false if there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsScrape(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxAttempts: 1})
	ctx := ctxFor(t, 10*time.Second)
	prod := qmtest.Dial(t, addr, "producer")
	w := qmtest.Dial(t, addr, "worker")
	qmtest.Dial(t, addr, "worker")

	if _, err := prod.Put(ctx, "jobs", []any{1, 2, 3, 4, 5}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := prod.Put(ctx, "later", []any{1, 2}, wire.PutOptions{Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 2})
	if err != nil || len(ts) != 2 {
		t.Fatalf("get: %v %v", ts, err)
	}
	if err := w.Ack(ctx, "jobs", ts[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := w.Nack(ctx, "jobs", ts[1].ID, "boom"); err != nil { // max attempts 1: dead
		t.Fatal(err)
	}
	if _, err := w.Get(ctx, "jobs", wire.GetOptions{Lease: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// A client with the wrong key fails its handshake.
	if _, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte("wrong"), Role: "worker"}); !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("dial with a wrong key: %v", err)
	}

	token := string(qmtest.Authkey)
	var fams map[string]*dto.MetricFamily
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		fams = scrape(t, url, token)
		if v, _ := metricValue(fams, "qm_lease_expiries_total"); v != 1 {
			return fmt.Errorf("qm_lease_expiries_total = %v, want 1", v)
		}
		// The queues' figures are read apart from the counter, at the
		// same scrape: they may be from just before the expiry.
		if v, _ := metricValue(fams, "qm_queue_expired_total", "queue", "jobs"); v != 1 {
			return fmt.Errorf("qm_queue_expired_total = %v, want 1", v)
		}
		return nil
	})
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"qm_queue_ready_tasks", []string{"queue", "jobs"}, 2},
		{"qm_queue_leased_tasks", []string{"queue", "jobs"}, 0},
		{"qm_queue_dead_tasks", []string{"queue", "jobs"}, 2}, // the nacked one and the expired one
		{"qm_queue_ready_tasks", []string{"queue", "jobs.dead"}, 2},
		{"qm_queue_puts_total", []string{"queue", "jobs"}, 5},
		{"qm_queue_gets_total", []string{"queue", "jobs"}, 3},
		{"qm_queue_acks_total", []string{"queue", "jobs"}, 1},
		{"qm_queue_nacks_total", []string{"queue", "jobs"}, 1},
		{"qm_queue_expired_total", []string{"queue", "jobs"}, 1},
		{"qm_queue_paused", []string{"queue", "jobs"}, 0},
		{"qm_queue_delayed_tasks", []string{"queue", "later"}, 2},
		{"qm_queue_retrying_tasks", []string{"queue", "later"}, 0},
		{"qm_queue_ready_tasks", []string{"queue", "later"}, 0},
		{"qm_clients", []string{"role", "worker"}, 2},
		{"qm_clients", []string{"role", "producer"}, 1},
		{"qm_handshake_failures_total", []string{"reason", "auth"}, 1},
		{"qm_request_duration_seconds", []string{"op", "put"}, 2},
		{"qm_request_duration_seconds", []string{"op", "get"}, 2},
		{"qm_request_duration_seconds", []string{"op", "nack"}, 1},
		{"qm_lease_expiries_total", nil, 1},
	} {
		got, ok := metricValue(fams, tc.name, tc.labels...)
		if !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if due, ok := metricValue(fams, "qm_queue_next_due_seconds", "queue", "later"); !ok || due < 3500 || due > 3600 {
		t.Errorf("qm_queue_next_due_seconds{queue=later} = %v (found %v), want about 3600", due, ok)
	}
	if _, ok := metricValue(fams, "qm_queue_next_due_seconds", "queue", "jobs"); ok {
		t.Error("qm_queue_next_due_seconds is set for a queue with no delayed task")
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	if fams["qm_store_fsync_duration_seconds"] != nil || fams["qm_store_writable"] != nil {
		t.Error("the data directory's metrics without a data directory")
	}
}

func TestMetricsFsync(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{DataDir: t.TempDir()})
	c := qmtest.Dial(t, addr, "producer")
	if _, err := c.Put(ctxFor(t, 10*time.Second), "jobs", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, url, string(qmtest.Authkey))
	// The put returned once its record was fsynced (FsyncAlways, the
	// default), so at least one fsync was observed.
	if n, ok := metricValue(fams, "qm_store_fsync_duration_seconds"); !ok || n < 1 {
		t.Fatalf("qm_store_fsync_duration_seconds: %v fsyncs (found %v), want >= 1", n, ok)
	}
	if v, ok := metricValue(fams, "qm_store_writable"); !ok || v != 1 {
		t.Fatalf("qm_store_writable = %v (found %v), want 1", v, ok)
	}
}

// The metrics must not break a master that is closing.
func TestMetricsDuringShutdown(t *testing.T) {
	_, url, srv := qmtest.StartMasterHTTP(t, master.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(url + "/metrics"); err == nil {
		t.Error("metrics served after Shutdown")
	}
}
