package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

func TestDeadTaskFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		code    int
		queue   string
		ids     []uint64
		all     bool
		errText string
	}{
		{[]string{"jobs", "3", "4"}, 0, "jobs", []uint64{3, 4}, false, ""},
		{[]string{"jobs.dead", "3"}, 0, "jobs", []uint64{3}, false, ""},
		{[]string{"jobs", "--all"}, 0, "jobs", nil, true, ""},
		{[]string{"jobs"}, 2, "", nil, false, "missing task IDs (or --all"},
		{[]string{"jobs", "3", "--all"}, 2, "", nil, false, "not both"},
		{[]string{"jobs", "x"}, 2, "", nil, false, `bad task ID "x"`},
		{[]string{}, 2, "", nil, false, "missing QUEUE"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var got *deadTaskOptions
			code, errOut := execute(t, newCmdRequeue(&factory{}, func(o *deadTaskOptions) error { got = o; return nil }), tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.errText) {
				t.Fatalf("exit %d (%s), want %d with %q", code, errOut, tc.code, tc.errText)
			}
			if code == 0 && (got.Queue != tc.queue || fmt.Sprint(got.IDs) != fmt.Sprint(tc.ids) && len(tc.ids) > 0 || got.All != tc.all) {
				t.Errorf("options %+v", got)
			}
		})
	}
	code, errOut := execute(t, newCmdDrop(&factory{}, func(*deadTaskOptions) error { return nil }), "jobs", "--all")
	if code != 2 || !strings.Contains(errOut, "unknown flag: --all") {
		t.Errorf("drop --all: %d %s", code, errOut)
	}
	code, errOut = execute(t, newCmdDrop(&factory{}, func(*deadTaskOptions) error { return nil }), "jobs")
	if code != 2 || !strings.Contains(errOut, "qmaster purge jobs.dead") {
		t.Errorf("drop without ids: %d %s", code, errOut)
	}
}

func TestHTTPFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		code    int
		errText string
	}{
		{[]string{"--http-addr", "127.0.0.1:0"}, 0, ""},
		{[]string{"--http-addr", "127.0.0.1:0", "--http-token", "t"}, 0, ""},
		{[]string{"--http-token", "t"}, 2, "need --http-addr"},
		{[]string{"--http-addr", ":1", "--http-token", "t", "--http-token-file", "f"}, 2, "not both"},
	} {
		var got *serveOptions
		code, errOut := execute(t, newRootCmd(&factory{}, func(o *serveOptions) error { got = o; return nil }), tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.errText) {
			t.Errorf("%v: exit %d (%s), want %d with %q", tc.args, code, errOut, tc.code, tc.errText)
		}
		if code == 0 && got.HTTP.Addr != "127.0.0.1:0" {
			t.Errorf("%v: %+v", tc.args, got.HTTP)
		}
	}
}

// TestOperateInProcess: dead lists the dead tasks with their errors,
// requeue and drop act on them, pause and resume on a queue.
func TestOperateInProcess(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxAttempts: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(testKey), Role: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ids, err := c.Put(ctx, "jobs", []any{"a", map[string]any{"n": 2}, "c"}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, "jobs", wire.GetOptions{Max: 3})
	if err != nil || len(ts) != 3 {
		t.Fatal(ts, err)
	}
	for _, task := range ts {
		if err := c.Nack(ctx, "jobs", task.ID, fmt.Sprintf("Traceback:\n\tValueError: bad %d", task.ID)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (int, string, string) {
		f, out, errOut := testFactory("")
		code := runInProcess(ctx, f, append(args, "--server", addr)...)
		return code, out.String(), errOut.String()
	}

	code, out, errOut := run("dead", "jobs")
	if code != 0 {
		t.Fatalf("dead: %d %s", code, errOut)
	}
	want := regexp.MustCompile(fmt.Sprintf(`(?m)^ID +ATTEMPTS +AGE +LAST ERROR +PAYLOAD\n%d +1 +\d+s +\.\.\.ValueError: bad %d +"a"\n`, ids[0], ids[0]))
	if !want.MatchString(out) || !strings.Contains(out, `{"n":2}`) {
		t.Errorf("dead jobs:\n%s", out)
	}
	if code, out, _ := run("dead", "jobs", "--json", "-n", "1"); code != 0 || !strings.Contains(out, `"last_error":"Traceback:\n\tValueError: bad`) || strings.Count(out, "\n") != 1 {
		t.Errorf("dead --json: %d %s", code, out)
	}
	if code, _, errOut := run("dead", "other"); code != 0 || !strings.Contains(errOut, "(no dead tasks in other)") {
		t.Errorf("dead of a queue without any: %d %s", code, errOut)
	}

	if code, _, errOut := run("pause", "jobs", "other"); code != 0 || errOut != "paused jobs\npaused other\n" {
		t.Errorf("pause: %d %q", code, errOut)
	}
	code, _, errOut = run("requeue", "jobs", fmt.Sprint(ids[0]), "999")
	if code != 1 || !strings.Contains(errOut, "requeued 1 dead task to jobs") || !strings.Contains(errOut, "not dead tasks of jobs: task 999: no such task") {
		t.Errorf("requeue: %d %s", code, errOut)
	}
	if got, _ := c.Get(ctx, "jobs", wire.GetOptions{Timeout: 20 * time.Millisecond}); len(got) != 0 {
		t.Errorf("a paused queue handed out %v", got)
	}
	if code, _, errOut := run("resume", "jobs"); code != 0 || errOut != "resumed jobs\n" {
		t.Errorf("resume: %d %q", code, errOut)
	}
	if got, _ := c.Get(ctx, "jobs", wire.GetOptions{Timeout: time.Second}); len(got) != 1 || got[0].ID != ids[0] {
		t.Errorf("after resume: %v", got)
	}
	if code, _, errOut := run("drop", "jobs", fmt.Sprint(ids[1])); code != 0 || errOut != "dropped 1 dead task of jobs\n" {
		t.Errorf("drop: %d %q", code, errOut)
	}
	if code, _, errOut := run("requeue", "jobs", "--all"); code != 0 || errOut != "requeued 1 dead task to jobs\n" {
		t.Errorf("requeue --all: %d %q", code, errOut)
	}
	st, err := c.Stats(ctx, "jobs")
	if err != nil || st[0].Ready != 1 || st[0].Leased != 1 || st[0].Dead != 0 || st[0].Paused {
		t.Errorf("at the end: %+v %v", st, err)
	}
	if code, _, errOut := run("resume", "nope"); code != 1 || !strings.Contains(errOut, "queue nope: unknown queue") {
		t.Errorf("resume of an unknown queue: %d %s", code, errOut)
	}
}

// TestHTTPAddr runs the binary with --http-addr: the endpoints answer,
// and stop with the master.
func TestHTTPAddr(t *testing.T) {
	p := startMaster(t, "--http-addr", "127.0.0.1:0")
	var httpAddr string
	re := regexp.MustCompile(`http_addr=(127\.0\.0\.1:\d+)`)
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m := re.FindStringSubmatch(p.stderr.String()); m != nil {
			httpAddr = m[1]
			return nil
		}
		return fmt.Errorf("no http_addr in the log:\n%s", p.stderr)
	})
	get := func(path string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+path, nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "qm_clients{role=\"worker\"} 0") {
		t.Errorf("/metrics: %d\n%s", code, body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	if !p.stop(10 * time.Second) {
		t.Fatal("the master did not stop")
	}
	if _, err := http.Get("http://" + httpAddr + "/healthz"); err == nil {
		t.Error("the HTTP endpoints outlive the master")
	}
}
