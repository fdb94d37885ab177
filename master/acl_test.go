package master_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/cookiejar"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// aclFile has a producer (ingest), a worker and an operator (ops).
const aclFile = `
[[key]]
name = "ingest"
secret = "ingest-secret"
put = ["jobs", "jobs.*"]

[[key]]
name = "worker"
secret = "worker-secret"
get = ["jobs"]

[[key]]
name = "ops"
secret = "ops-secret"
admin = true
`

func parseACL(t *testing.T, file string) *acl.Rules {
	t.Helper()
	r, err := acl.Parse([]byte(file), t.TempDir())
	if err != nil {
		t.Fatalf("parse acl: %v", err)
	}
	return r
}

// startACLMaster starts a master with the keys of file.
func startACLMaster(t *testing.T, file string) (string, *master.Server) {
	t.Helper()
	return qmtest.StartMaster(t, master.Config{ACL: parseACL(t, file)})
}

func dialACL(t *testing.T, addr, secret, role string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(secret), Role: role, Name: t.Name()})
	if err != nil {
		t.Fatalf("dial with %s: %v", secret, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestACLDenied: every call outside a key's permissions fails with
// wire.ErrPermissionDenied and a text naming the key and the call; the
// connection goes on; the calls inside them succeed.
func TestACLDenied(t *testing.T) {
	addr, _ := startACLMaster(t, aclFile)
	ctx := context.Background()
	ingest := dialACL(t, addr, "ingest-secret", "producer")
	worker := dialACL(t, addr, "worker-secret", "worker")
	ops := dialACL(t, addr, "ops-secret", "admin")

	if ingest.MayAdminister() || worker.MayAdminister() || !ops.MayAdminister() {
		t.Errorf("MayAdminister: ingest %v, worker %v, ops %v; want only ops", ingest.MayAdminister(), worker.MayAdminister(), ops.MayAdminister())
	}
	if _, err := ingest.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{}); err != nil {
		t.Fatalf("ingest put jobs: %v", err)
	}
	if _, err := ingest.Put(ctx, "jobs.urgent", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatalf("ingest put jobs.urgent: %v", err)
	}
	ts, err := worker.Get(ctx, "jobs", wire.GetOptions{Max: 2})
	if err != nil || len(ts) != 2 {
		t.Fatalf("worker get jobs: %v, %v", ts, err)
	}

	deny := func(what string, err error, want string) {
		t.Helper()
		if !errors.Is(err, wire.ErrPermissionDenied) {
			t.Errorf("%s: %v, want ErrPermissionDenied", what, err)
			return
		}
		if err.Error() != "permission denied: key "+want {
			t.Errorf("%s: %q, want %q", what, err.Error(), "permission denied: key "+want)
		}
	}
	_, err = ingest.Get(ctx, "payroll", wire.GetOptions{})
	deny("ingest get", err, "ingest may not get from payroll")
	deny("ingest ack", ingest.Ack(ctx, "jobs", ts[0].ID), "ingest may not get from jobs")
	deny("ingest nack", ingest.Nack(ctx, "jobs", ts[0].ID, "x"), "ingest may not get from jobs")
	deny("ingest extend", ingest.Extend(ctx, "jobs", time.Second, ts[0].ID), "ingest may not get from jobs")
	deny("ingest complete", ingest.Complete(ctx, "jobs", "", []wire.Completion{{ID: ts[0].ID}}), "ingest may not get from jobs")
	_, err = worker.Put(ctx, "jobs", []any{1}, wire.PutOptions{})
	deny("worker put", err, "worker may not put to jobs")
	_, err = ingest.Put(ctx, "jobs", []any{1}, wire.PutOptions{ReplyTo: "payroll"})
	deny("ingest put with a reply queue it may neither put to nor get from", err, "ingest may not name payroll as a reply queue")
	_, err = worker.Get(ctx, "jobs.urgent", wire.GetOptions{})
	deny("worker get jobs.urgent", err, "worker may not get from jobs.urgent")
	_, err = worker.Stats(ctx, "payroll")
	deny("worker stats payroll", err, "worker may not use payroll")
	_, err = worker.Stats(ctx, "")
	deny("worker stats", err, "worker may not inspect every queue")
	_, err = worker.Peek(ctx, "jobs", 1)
	deny("worker peek", err, "worker may not peek at jobs")
	_, err = worker.Queues(ctx)
	deny("worker queues", err, "worker may not list the queues")
	_, err = worker.Clients(ctx)
	deny("worker clients", err, "worker may not list the clients")
	_, err = worker.Purge(ctx, "jobs")
	deny("worker purge", err, "worker may not purge jobs")
	deny("worker delete", worker.Delete(ctx, "jobs"), "worker may not delete jobs")
	deny("worker pause", worker.Pause(ctx, "jobs"), "worker may not pause jobs")
	deny("worker resume", worker.Resume(ctx, "jobs"), "worker may not resume jobs")
	_, err = worker.Requeue(ctx, "jobs")
	deny("worker requeue", err, "worker may not requeue jobs")
	_, err = worker.Drop(ctx, "jobs", 1)
	deny("worker drop", err, "worker may not drop jobs")
	// A chained request is checked on its own: the put runs, the get is refused.
	_, _, putErr, err := ingest.PutThenGet(ctx, "jobs", nil, wire.PutOptions{}, "jobs", wire.GetOptions{})
	if putErr == nil && err == nil {
		t.Error("ingest put-then-get from jobs: no error")
	}

	// Allowed calls still work, on the same connections.
	if err := worker.Complete(ctx, "jobs", "", []wire.Completion{{ID: ts[0].ID}, {ID: ts[1].ID}}); err != nil {
		t.Errorf("worker complete: %v", err)
	}
	if _, err := worker.Stats(ctx, "jobs"); err != nil {
		t.Errorf("worker stats jobs: %v", err)
	}
	if n, err := ops.Purge(ctx, "jobs"); err != nil || n != 1 {
		t.Errorf("ops purge jobs: %d, %v; want 1 task", n, err)
	}
	clients, err := ops.Clients(ctx)
	if err != nil {
		t.Errorf("ops clients: %v", err)
	}
	keys := map[string]string{}
	for _, ci := range clients {
		keys[ci.Role] = ci.Key
	}
	if keys["producer"] != "ingest" || keys["worker"] != "worker" || keys["admin"] != "ops" {
		t.Errorf("client list keys by role: %v, want producer:ingest worker:worker admin:ops", keys)
	}
	if _, err := ops.Put(ctx, "jobs", []any{1}, wire.PutOptions{}); !errors.Is(err, wire.ErrPermissionDenied) {
		t.Errorf("ops put: %v; admin is not put", err)
	}
}

// TestACLDeletePatterns: a key may delete the queues its delete patterns
// match, cancelling the tasks that reply to them, as a map with a
// producer's key does at its end; put and get do not allow it.
func TestACLDeletePatterns(t *testing.T) {
	addr, _ := startACLMaster(t, `
[[key]]
name = "mapper"
secret = "mapper-secret"
put = ["jobs", "map-*"]
get = ["map-*"]
delete = ["map-*"]

[[key]]
name = "reader"
secret = "reader-secret"
put = ["map-*"]
get = ["map-*"]

[[key]]
name = "worker"
secret = "worker-secret"
get = ["jobs"]
`)
	ctx := ctxFor(t, 10*time.Second)
	mapper := dialACL(t, addr, "mapper-secret", "producer")
	reader := dialACL(t, addr, "reader-secret", "producer")
	worker := dialACL(t, addr, "worker-secret", "worker")

	if _, err := mapper.Put(ctx, "jobs", []any{1, 2}, wire.PutOptions{ReplyTo: "map-1"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		c     *wire.Client
		queue string
		want  string
	}{
		{reader, "map-1", "permission denied: key reader may not delete map-1"},
		{mapper, "jobs", "permission denied: key mapper may not delete jobs"},
		{worker, "jobs", "permission denied: key worker may not delete jobs"},
	} {
		if _, err := d.c.DeleteCancelling(ctx, d.queue); !errors.Is(err, wire.ErrPermissionDenied) || err.Error() != d.want {
			t.Errorf("delete %s: %v, want %q", d.queue, err, d.want)
		}
	}
	if ts, err := worker.Get(ctx, "jobs", wire.GetOptions{Max: 1}); err != nil || len(ts) != 1 {
		t.Fatalf("get after the refused deletes: %+v, %v; want a task", ts, err)
	}
	// map-1 was never made: the delete says so, and cancels all the same.
	if _, err := mapper.DeleteCancelling(ctx, "map-1"); !errors.Is(err, wire.ErrUnknownQueue) {
		t.Fatalf("the delete of map-1 by the key that may: %v, want it unknown", err)
	}
	if ts, err := worker.Get(ctx, "jobs", wire.GetOptions{Timeout: 50 * time.Millisecond}); err != nil || len(ts) != 0 {
		t.Errorf("get after the owner's delete: %+v, %v; want no task, the other one cancelled", ts, err)
	}
}

// TestACLResults: a worker may publish a result to the reply queue its
// task names though it may not put there; a result for its --results
// queue, which it may not put to, is dropped with a coded error, and the
// task is done all the same.
func TestACLResults(t *testing.T) {
	addr, _ := startACLMaster(t, aclFile)
	ctx := context.Background()
	ingest := dialACL(t, addr, "ingest-secret", "producer")
	worker := dialACL(t, addr, "worker-secret", "worker")
	ops := dialACL(t, addr, "ops-secret", "admin")

	if _, err := ingest.Put(ctx, "jobs", []any{1}, wire.PutOptions{ReplyTo: "jobs.replies"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ingest.Put(ctx, "jobs", []any{2}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ts, err := worker.Get(ctx, "jobs", wire.GetOptions{Max: 2})
	if err != nil || len(ts) != 2 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	err = worker.Complete(ctx, "jobs", "results", []wire.Completion{{ID: ts[0].ID, Value: []byte{0xa3, 0x6f, 0x6e, 0x65}}, {ID: ts[1].ID, Value: []byte{0xa3, 0x74, 0x77, 0x6f}}})
	if !errors.Is(err, wire.ErrPermissionDenied) || !strings.Contains(err.Error(), "key worker may not publish results to results (1 results dropped") {
		t.Fatalf("complete: %v, want a denial of the results queue", err)
	}
	st, err := ops.Stats(ctx, "jobs")
	if err != nil || st[0].Done != 2 || st[0].Leased != 0 {
		t.Fatalf("jobs after the complete: %+v, %v; want both done", st, err)
	}
	st, err = ops.Stats(ctx, "jobs.replies")
	if err != nil || st[0].Ready != 1 {
		t.Fatalf("jobs.replies: %+v, %v; want the one result", st, err)
	}
	if st, err := ops.Stats(ctx, "results"); err == nil && st[0].Ready != 0 {
		t.Fatalf("results: %+v; want nothing published there", st)
	}
}

// TestACLWrongKey: a key not in the file fails the handshake.
func TestACLWrongKey(t *testing.T) {
	addr, _ := startACLMaster(t, aclFile)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte("guess")})
	if !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("dial with a wrong key: %v, want ErrAuthFailed", err)
	}
	_, err = wire.Dial(ctx, wire.Config{Addr: addr, Authkey: qmtest.Authkey})
	if !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("dial with the test authkey: %v, want ErrAuthFailed (the ACL replaces it)", err)
	}
}

// TestACLMetrics: denials are counted by key and operation.
func TestACLMetrics(t *testing.T) {
	cfg := master.Config{ACL: parseACL(t, aclFile), HTTPToken: []byte("http-token")}
	addr, url, _ := qmtest.StartMasterHTTP(t, cfg)
	worker := dialACL(t, addr, "worker-secret", "worker")
	for range 3 {
		if _, err := worker.Put(context.Background(), "jobs", []any{1}, wire.PutOptions{}); !errors.Is(err, wire.ErrPermissionDenied) {
			t.Fatalf("put: %v", err)
		}
	}
	fams := scrape(t, url, "http-token")
	if v, ok := metricValue(fams, "qm_permission_denied_total", "key", "worker", "op", "put"); !ok || v != 3 {
		t.Fatalf("qm_permission_denied_total{key=worker,op=put} = %v (found %v), want 3", v, ok)
	}
}

// TestACLConfig: an ACL excludes Authkey and InsecureNoAuth.
func TestACLConfig(t *testing.T) {
	r := parseACL(t, aclFile)
	for _, cfg := range []master.Config{{ACL: r, Authkey: []byte("k")}, {ACL: r, InsecureNoAuth: true}} {
		if _, err := master.New(cfg); err == nil {
			t.Errorf("New(%+v): no error", cfg)
		}
	}
}

// TestACLPython: a Python client's calls outside its key's permissions
// raise an error with the native client's text; a worker's result goes
// to its task's reply queue though it may not put there.
func TestACLPython(t *testing.T) {
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			t.Parallel()
			addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{ACL: parseACL(t, aclFile)})
			ingest := dialACL(t, addr, "ingest-secret", "producer")
			ops := dialACL(t, addr, "ops-secret", "admin")
			ctx := context.Background()
			if _, err := ingest.Put(ctx, "jobs", []any{7}, wire.PutOptions{ReplyTo: "jobs.replies"}); err != nil {
				t.Fatal(err)
			}
			script := `
import sys
from multiprocessing.managers import BaseManager, RemoteError
class M(BaseManager): pass
for name in ('get_jobs_queue', 'get_payroll_queue', 'get_result_queue'):
    M.register(name)
host, port = sys.argv[1].rsplit(':', 1)
def connect(key):
    m = M(address=(host, int(port)), authkey=key.encode())
    m.connect()
    return m
def attempt(what, f):
    try:
        f()
        print(what, 'ok')
    except RemoteError as e:
        line = [l for l in str(e).splitlines() if 'Error:' in l][-1]
        print(what, line.strip())
ing = connect('ingest-secret')
attempt('ingest get', lambda: ing.get_jobs_queue().get(timeout=1))
attempt('ingest payroll', lambda: ing.get_payroll_queue())
attempt('ingest reply_to', lambda: ing.get_jobs_queue().put_with(1, reply_to='payroll'))
w = connect('worker-secret')
jobs = w.get_jobs_queue()
attempt('worker put', lambda: jobs.put(1))
attempt('worker qsize', lambda: jobs.qsize())
n = jobs.get(timeout=5)
results = w.get_result_queue()
attempt('worker result', lambda: results.put(n * 6))
attempt('worker results', lambda: results.put(0))
`
			out := py.Run(t, pyTimeout, script, addr)
			want := []string{
				"ingest get PermissionError: permission denied: key ingest may not get from jobs",
				"ingest payroll PermissionError: permission denied: key ingest may not use payroll",
				"ingest reply_to PermissionError: permission denied: key ingest may not name payroll as a reply queue",
				"worker put PermissionError: permission denied: key worker may not put to jobs",
				"worker qsize ok",
				"worker result ok",
				"worker results PermissionError: permission denied: key worker may not put to results",
			}
			if got := strings.Split(strings.TrimSpace(out), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("python printed:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
			}
			st, err := ops.Stats(ctx, "jobs.replies")
			if err != nil || st[0].Ready != 1 {
				t.Fatalf("jobs.replies: %+v, %v; want the python worker's result", st, err)
			}
			fams := scrape(t, url, "ops-secret")
			for _, c := range [][2]string{{"ingest", "py_get"}, {"ingest", "py_create"}, {"worker", "py_put"}} {
				if v, ok := metricValue(fams, "qm_permission_denied_total", "key", c[0], "op", c[1]); !ok || v < 1 {
					t.Errorf("qm_permission_denied_total{key=%s,op=%s} = %v (found %v), want at least 1", c[0], c[1], v, ok)
				}
			}
		})
	}
}

// TestACLHTTP: with an ACL, the HTTP endpoints take the secret of a key
// with admin (and --http-token if given), as a bearer token or through
// the dashboard's login; not a key without admin; and a key removed by
// SetACL no longer opens them, nor does its session cookie.
func TestACLHTTP(t *testing.T) {
	_, url, srv := qmtest.StartMasterHTTP(t, master.Config{ACL: parseACL(t, aclFile)})
	for _, c := range []struct {
		token string
		want  int
	}{{"ops-secret", http.StatusOK}, {"worker-secret", http.StatusUnauthorized}, {"", http.StatusUnauthorized}} {
		if code, body := httpGet(t, url+"/metrics", c.token); code != c.want {
			t.Errorf("GET /metrics with %q: %d, want %d: %s", c.token, code, c.want, body)
		}
	}

	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Jar: jar}
	resp, err := client.PostForm(url+"/login", neturl.Values{"token": {"ops-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	state := func() int {
		t.Helper()
		resp, err := client.Get(url + "/api/state")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := state(); code != http.StatusOK {
		t.Fatalf("GET /api/state after logging in with ops: %d", code)
	}

	if _, err := srv.SetACL(parseACL(t, "[[key]]\nname = \"admin2\"\nsecret = \"admin2-secret\"\nadmin = true\n")); err != nil {
		t.Fatal(err)
	}
	if code := state(); code != http.StatusUnauthorized {
		t.Errorf("GET /api/state with ops' session after ops was removed: %d, want 401", code)
	}
	if code, _ := httpGet(t, url+"/metrics", "ops-secret"); code != http.StatusUnauthorized {
		t.Errorf("GET /metrics with the removed ops key: %d, want 401", code)
	}
	if code, _ := httpGet(t, url+"/metrics", "admin2-secret"); code != http.StatusOK {
		t.Errorf("GET /metrics with the new admin key: %d, want 200", code)
	}

	// A key name may hold dots: its session works. (Its cookie was read
	// up to the first dot, and every request after the login was refused.)
	if _, err := srv.SetACL(parseACL(t, "[[key]]\nname = \"ops.team\"\nsecret = \"dotted-secret\"\nadmin = true\n")); err != nil {
		t.Fatal(err)
	}
	resp, err = client.PostForm(url+"/login", neturl.Values{"token": {"dotted-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code := state(); code != http.StatusOK {
		t.Errorf("GET /api/state after logging in with ops.team: %d, want 200", code)
	}
}
