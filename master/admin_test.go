package master_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// deadTasks fills queue q with n tasks and fails each once (MaxAttempts
// must be 1), so that they are dead; it returns their ids.
func deadTasks(t *testing.T, c *wire.Client, q string, n int) []uint64 {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	items := make([]any, n)
	for i := range items {
		items[i] = i
	}
	ids, err := c.Put(ctx, q, items, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, q, wire.GetOptions{Max: n})
	if err != nil || len(ts) != n {
		t.Fatalf("get: %v %v", ts, err)
	}
	for _, task := range ts {
		if err := c.Nack(ctx, q, task.ID, fmt.Sprintf("failure %d", task.ID)); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func TestAdminOps(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	ctx := ctxFor(t, 20*time.Second)
	admin := qmtest.Dial(t, addr, "admin")
	w := qmtest.Dial(t, addr, "worker")

	ids := deadTasks(t, admin, "jobs", 4)
	dead, err := admin.Peek(ctx, "jobs.dead", 10)
	if err != nil || len(dead) != 4 || dead[0].LastError != fmt.Sprintf("failure %d", ids[0]) {
		t.Fatalf("dead tasks: %+v %v", dead, err)
	}

	// Pause: a get waits out its timeout even though tasks are ready.
	if _, err := admin.Put(ctx, "jobs", []any{"x"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := admin.Pause(ctx, "jobs"); err != nil {
		t.Fatal(err)
	}
	st, err := admin.Stats(ctx, "jobs")
	if err != nil || !st[0].Paused || st[0].Ready != 1 {
		t.Fatalf("stats of a paused queue: %+v %v", st, err)
	}
	if ts, err := w.Get(ctx, "jobs", wire.GetOptions{Timeout: 50 * time.Millisecond}); err != nil || len(ts) != 0 {
		t.Fatalf("get from a paused queue: %v %v", ts, err)
	}
	got := make(chan []wire.Task, 1)
	go func() {
		ts, _ := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 10 * time.Second})
		got <- ts
	}()
	time.Sleep(50 * time.Millisecond)

	// Requeue two dead tasks while paused; then resume: the waiting get
	// has the ready task and the requeued ones.
	n, err := admin.Requeue(ctx, "jobs", ids[0], ids[2], 9999)
	if n != 2 || !errors.Is(err, wire.ErrNoSuchTask) {
		t.Fatalf("requeue: %d, %v", n, err)
	}
	if err := admin.Resume(ctx, "jobs"); err != nil {
		t.Fatal(err)
	}
	select {
	case ts := <-got:
		if len(ts) != 3 || ts[1].ID != ids[0] || ts[2].ID != ids[2] || ts[1].Attempt != 1 {
			t.Fatalf("after resume: %+v", ts)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("resume did not wake the waiting get")
	}
	if n, err := admin.Drop(ctx, "jobs.dead", ids[1]); n != 1 || err != nil {
		t.Fatalf("drop: %d, %v", n, err)
	}
	if _, err := admin.Drop(ctx, "jobs.dead"); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("drop without ids: %v", err)
	}
	if n, err := admin.Requeue(ctx, "jobs"); n != 1 || err != nil {
		t.Fatalf("requeue all: %d, %v", n, err)
	}
	st, _ = admin.Stats(ctx, "jobs")
	if st[0].Dead != 0 || st[0].Ready != 1 || st[0].Paused {
		t.Fatalf("at the end: %+v", st[0])
	}
	if err := admin.Resume(ctx, "nope"); !errors.Is(err, wire.ErrUnknownQueue) {
		t.Errorf("resume of an unknown queue: %v", err)
	}
}

// dashboardClient signs in through the login form, as the page does, and
// returns an HTTP client that keeps the session cookie.
func dashboardClient(t *testing.T, base, key string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar}
	resp, err := hc.PostForm(base+"/login", url.Values{"token": {"wrong"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("login with a wrong key: %d", resp.StatusCode)
	}
	resp, err = hc.PostForm(base+"/login", url.Values{"token": {key}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "app.js") {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	u, _ := url.Parse(base)
	cs := jar.Cookies(u)
	if len(cs) != 1 || strings.Contains(cs[0].Value, key) {
		t.Fatalf("session cookies: %v", cs)
	}
	return hc
}

// action posts an action to the dashboard API and returns the status
// and the decoded answer.
func action(t *testing.T, hc *http.Client, base, body string, header bool) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/api/actions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if header {
		req.Header.Set("X-QM-Dashboard", "1")
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func TestDashboardAPI(t *testing.T) {
	addr, base, _ := qmtest.StartMasterHTTP(t, master.Config{MaxAttempts: 1})
	ctx := ctxFor(t, 20*time.Second)
	c := qmtest.Dial(t, addr, "worker")
	ids := deadTasks(t, c, "jobs", 3)
	if _, err := c.Put(ctx, "jobs", []any{"a", "b"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	held, err := c.Get(ctx, "jobs", wire.GetOptions{})
	if err != nil || len(held) != 1 {
		t.Fatal(held, err)
	}

	hc := dashboardClient(t, base, string(qmtest.Authkey))
	// The cookie alone does not allow an action: the page's header must
	// come with it.
	if code, _ := action(t, hc, base, `{"action":"pause","queue":"jobs"}`, false); code != http.StatusForbidden {
		t.Fatalf("action with the cookie and without the header: %d", code)
	}

	resp, err := hc.Get(base + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Queues []struct {
			Queue  string `json:"queue"`
			Ready  int    `json:"ready"`
			Dead   int    `json:"dead"`
			Paused bool   `json:"paused"`
		} `json:"queues"`
		Clients []struct {
			ID    uint64 `json:"id"`
			Role  string `json:"role"`
			Tasks []struct {
				Queue string    `json:"queue"`
				ID    uint64    `json:"id"`
				Since time.Time `json:"since"`
			} `json:"tasks"`
		} `json:"clients"`
		Dead []struct {
			Queue string `json:"queue"`
			Count int    `json:"count"`
			Tasks []struct {
				ID        uint64 `json:"id"`
				LastError string `json:"last_error"`
				Payload   string `json:"payload"`
			} `json:"tasks"`
		} `json:"dead"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Queues) != 2 || st.Queues[0].Queue != "jobs" || st.Queues[0].Ready != 1 || st.Queues[0].Dead != 3 {
		t.Errorf("state queues: %+v", st.Queues)
	}
	if len(st.Clients) != 1 || st.Clients[0].ID != c.ID() || len(st.Clients[0].Tasks) != 1 ||
		st.Clients[0].Tasks[0].ID != held[0].ID || time.Since(st.Clients[0].Tasks[0].Since) > time.Minute {
		t.Errorf("state clients: %+v", st.Clients)
	}
	if len(st.Dead) != 1 || st.Dead[0].Queue != "jobs" || st.Dead[0].Count != 3 ||
		st.Dead[0].Tasks[1].LastError != fmt.Sprintf("failure %d", ids[1]) || st.Dead[0].Tasks[1].Payload != "1" {
		t.Errorf("state dead: %+v", st.Dead)
	}

	bearer := &http.Client{Transport: bearerTransport(string(qmtest.Authkey))}
	for _, tc := range []struct {
		name, body string
		code       int
		count      float64
	}{
		{"pause", `{"action":"pause","queue":"jobs"}`, 200, 0},
		{"requeue one", fmt.Sprintf(`{"action":"requeue","queue":"jobs","ids":[%d]}`, ids[0]), 200, 1},
		{"drop one", fmt.Sprintf(`{"action":"drop","queue":"jobs","ids":[%d]}`, ids[1]), 200, 1},
		{"drop missing", `{"action":"drop","queue":"jobs","ids":[424242]}`, 404, 0},
		{"drop all refused", `{"action":"drop","queue":"jobs"}`, 400, 0},
		{"resume", `{"action":"resume","queue":"jobs"}`, 200, 0},
		{"resume unknown", `{"action":"resume","queue":"nope"}`, 404, 0},
		{"purge dead", `{"action":"purge","queue":"jobs.dead"}`, 200, 1},
		{"purge", `{"action":"purge","queue":"jobs"}`, 200, 2},
		{"bad action", `{"action":"explode","queue":"jobs"}`, 400, 0},
		{"unknown field", `{"action":"purge","queue":"jobs","x":1}`, 400, 0},
		{"trailing garbage", `{"action":"purge","queue":"jobs"} {"action":"purge","queue":"other"}`, 400, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := action(t, bearer, base, tc.body, false)
			if code != tc.code || out["count"] != tc.count {
				t.Errorf("%s: %d %v, want %d count %v", tc.body, code, out, tc.code, tc.count)
			}
		})
	}
	// By the cookie, with the header, as the page does.
	if code, out := action(t, hc, base, `{"action":"pause","queue":"other"}`, true); code != 200 {
		t.Fatalf("action by the page: %d %v", code, out)
	}
	stats, err := c.Stats(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"jobs": "ready 0 leased 1 dead 0 paused false", "jobs.dead": "ready 0 leased 0 dead 0 paused false", "other": "ready 0 leased 0 dead 0 paused true"}
	for _, s := range stats {
		if got := fmt.Sprintf("ready %d leased %d dead %d paused %v", s.Ready, s.Leased, s.Dead, s.Paused); got != want[s.Queue] {
			t.Errorf("%s: %s, want %s", s.Queue, got, want[s.Queue])
		}
	}
}

type bearerTransport string

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(b))
	return http.DefaultTransport.RoundTrip(r)
}
