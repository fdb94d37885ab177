package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/wire"
)

const e2eACL = `
[[key]]
name = "ingest"
secret = "ingest-secret"
put = ["jobs"]

[[key]]
name = "worker"
secret_file = "worker.key"
get = ["jobs"]
`

func dialSecret(t *testing.T, addr, secret string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(secret), Name: t.Name()})
	if err != nil {
		t.Fatalf("dial with %s: %v", secret, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestE2EACL: qmaster --acl serves the file's keys, each within its
// permissions, to clients and to qmaster's own commands; kill -HUP
// re-reads it: a file that does not parse is refused with its line and
// the old rules stay; a good one closes the removed key's connections
// and gives the remaining ones their new permissions.
func TestE2EACL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acl.toml")
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("worker.key", "worker-secret\n")
	write("acl.toml", e2eACL)
	m := startMaster(t, "--acl", path)
	if !strings.Contains(m.stderr.String(), "auth=\"acl "+path+" (2 keys)\"") {
		t.Errorf("listening line does not name the acl:\n%s", m.stderr)
	}

	r := qmaster(t, "", env("QM_AUTHKEY=ingest-secret"), "put", "--server", m.addr, "jobs", "1", "2")
	if r.code != 0 {
		t.Fatalf("put with ingest: exit %d: %s", r.code, r.stderr)
	}
	r = qmaster(t, "", env("QM_AUTHKEY=ingest-secret"), "get", "--server", m.addr, "payroll")
	if r.code == 0 || !strings.Contains(r.stderr, "permission denied: key ingest may not get from payroll") {
		t.Fatalf("get with ingest: exit %d, stderr %q; want the denial", r.code, r.stderr)
	}
	r = qmaster(t, "", env("QM_AUTHKEY="+testKey), "inspect", "--server", m.addr)
	if r.code == 0 {
		t.Fatalf("inspect with the old authkey: exit 0; want a failed authentication")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ingest := dialSecret(t, m.addr, "ingest-secret")
	worker := dialSecret(t, m.addr, "worker-secret")
	if _, err := worker.Get(ctx, "jobs.x", wire.GetOptions{}); !errors.Is(err, wire.ErrPermissionDenied) {
		t.Fatalf("worker get jobs.x: %v, want a denial", err)
	}

	write("acl.toml", "[[key]]\nname = \"worker\"\nsecret = = \"x\"\n")
	hup := func(logLine string) {
		t.Helper()
		if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if !strings.Contains(m.stderr.String(), logLine) {
				return errors.New("no log line " + logLine + " in:\n" + m.stderr.String())
			}
			return nil
		})
	}
	hup("acl reload refused")
	if !strings.Contains(m.stderr.String(), "line 3") {
		t.Errorf("refusal does not name the line:\n%s", m.stderr)
	}
	if _, err := ingest.Put(ctx, "jobs", []any{3}, wire.PutOptions{}); err != nil {
		t.Fatalf("ingest put after a refused reload: %v", err)
	}

	write("acl.toml", "[[key]]\nname = \"worker\"\nsecret_file = \"worker.key\"\nget = [\"jobs\", \"jobs.*\"]\n")
	hup("acl reloaded")
	select {
	case <-ingest.Done():
	case <-ctx.Done():
		t.Fatal("ingest's connection is still open after its key was removed")
	}
	if _, err := worker.Get(ctx, "jobs.x", wire.GetOptions{}); err != nil {
		t.Fatalf("worker get jobs.x after the reload: %v", err)
	}
	ts, err := worker.Get(ctx, "jobs", wire.GetOptions{Max: 10})
	if err != nil || len(ts) != 3 {
		t.Fatalf("worker get jobs: %d tasks, %v; want the 3 put", len(ts), err)
	}
}

// TestE2EACLFlags: --acl excludes the other ways of giving a key, and a
// file that does not parse stops the master at start with its line.
func TestE2EACLFlags(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[[key]]\nname = \"a\"\nput = [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--acl", bad, "--authkey", "k"}, "--acl lists the keys"},
		{[]string{"--acl", bad, "--insecure-no-auth"}, "--insecure-no-auth serves without a key"},
		{[]string{"--acl", bad, "--addr", "127.0.0.1:0"}, "line 3"},
		{[]string{"--acl", filepath.Join(dir, "missing.toml"), "--addr", "127.0.0.1:0"}, "read acl"},
	} {
		r := qmaster(t, "", nil, c.args...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("qmaster %v: exit %d, stderr %q; want an error with %q", c.args, r.code, r.stderr, c.want)
		}
	}
}

// TestE2EACLHTTPWithoutAdmin: a master whose HTTP endpoints no key of its
// ACL can open (no admin, no --http-token) says so as it starts.
func TestE2EACLHTTPWithoutAdmin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acl.toml")
	if err := os.WriteFile(path, []byte("[[key]]\nname = \"ingest\"\nsecret = \"ingest-secret\"\nput = [\"jobs\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := qmtest.FreeAddrs(t, 1)[0]
	m := startMaster(t, "--acl", path, "--http-addr", httpAddr)
	if !strings.Contains(m.stderr.String(), "every request to the HTTP endpoints (--http-addr) but /healthz and /readyz will be refused") {
		t.Errorf("no warning that the HTTP endpoints cannot be opened:\n%s", m.stderr)
	}
	m = startMaster(t, "--acl", path)
	if strings.Contains(m.stderr.String(), "HTTP endpoints") {
		t.Errorf("a warning of HTTP endpoints without --http-addr:\n%s", m.stderr)
	}
}

// TestE2EACLReloadUnderLoad: SIGHUPs of the real binary, the file
// alternating between two versions (a temp key added and removed, the
// worker's permissions widened and narrowed), while a producer puts and a
// worker completes: every result arrives, and neither connection drops.
func TestE2EACLReloadUnderLoad(t *testing.T) {
	const (
		base = `
[[key]]
name = "ingest"
secret = "ingest-secret"
put = ["jobs"]
get = ["jobs.replies"]

[[key]]
name = "worker"
secret = "worker-secret"
get = ["jobs"]
`
		temp = `
[[key]]
name = "temp"
secret = "temp-secret"
get = ["*"]
`
		total   = 1000
		reloads = 20
	)
	dir := t.TempDir()
	path := filepath.Join(dir, "acl.toml")
	if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	m := startMaster(t, "--acl", path)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	producer := dialSecret(t, m.addr, "ingest-secret")
	worker := dialSecret(t, m.addr, "worker-secret")

	errs := make(chan error, 3)
	wctx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		for wctx.Err() == nil {
			ts, err := worker.Get(wctx, "jobs", wire.GetOptions{Max: 16, Timeout: 50 * time.Millisecond})
			if err != nil {
				if wctx.Err() == nil {
					errs <- fmt.Errorf("worker get: %w", err)
				}
				return
			}
			done := make([]wire.Completion, len(ts))
			for i, task := range ts {
				done[i] = wire.Completion{ID: task.ID, Value: task.Payload}
			}
			if len(done) > 0 {
				if err := worker.Complete(wctx, "jobs", "", done); err != nil {
					if wctx.Err() == nil {
						errs <- fmt.Errorf("worker complete: %w", err)
					}
					return
				}
			}
		}
	}()
	go func() {
		for i := 0; i < total; i += 10 {
			items := make([]any, 10)
			for j := range items {
				items[j] = i + j
			}
			if _, err := producer.Put(ctx, "jobs", items, wire.PutOptions{ReplyTo: "jobs.replies"}); err != nil {
				errs <- fmt.Errorf("put: %w", err)
				return
			}
			time.Sleep(time.Millisecond) // spread the puts over the reloads
		}
	}()

	reloadsDone := make(chan struct{})
	go func() {
		defer close(reloadsDone)
		for i := range reloads {
			file := base
			if i%2 == 0 {
				file = strings.Replace(base, `get = ["jobs"]`, `get = ["jobs", "jobs.*"]`, 1) + temp
			}
			if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
				errs <- err
				return
			}
			before := strings.Count(m.stderr.String(), "acl reloaded")
			if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				errs <- err
				return
			}
			for strings.Count(m.stderr.String(), "acl reloaded") == before {
				if ctx.Err() != nil {
					errs <- errors.New("a reload was not logged")
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()

	seen := make(map[uint64]bool)
	for len(seen) < total {
		ts, err := producer.Get(ctx, "jobs.replies", wire.GetOptions{Max: 100, Timeout: 100 * time.Millisecond, NoAck: true})
		if err != nil {
			t.Fatalf("get replies after %d: %v", len(seen), err)
		}
		for _, task := range ts {
			r, err := wire.DecodeResult(task.Payload)
			if err != nil {
				t.Fatal(err)
			}
			seen[r.TaskID] = true
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
	}
	<-reloadsDone
	stopWorker()
	<-workerDone
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	for name, c := range map[string]*wire.Client{"producer": producer, "worker": worker} {
		select {
		case <-c.Done():
			t.Errorf("the %s's connection dropped during the reloads", name)
		default:
		}
	}
	if n := strings.Count(m.stderr.String(), "acl reloaded"); n != reloads {
		t.Errorf("%d reloads logged, want %d", n, reloads)
	}
}

// TestE2EACLMapDenied: a map that its key's permissions stop reports the
// denial first, and not that it could not delete its result queue, which
// adds nothing; a map stopped for another reason by a key that may
// delete its result queue deletes it, and the tasks left with it, as an
// admin's map does; one that may not says that they run for no one.
func TestE2EACLMapDenied(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acl.toml")
	acl := `
[[key]]
name = "ingest"
secret = "ingest-secret"
put = ["jobs"]

[[key]]
name = "mapper"
secret = "mapper-secret"
put = ["jobs", "map-*"]
get = ["map-*"]
delete = ["map-*"]

[[key]]
name = "nodelete"
secret = "nodelete-secret"
put = ["jobs", "map-*"]
get = ["map-*"]

[[key]]
name = "worker"
secret = "worker-secret"
get = ["jobs"]
`
	if err := os.WriteFile(path, []byte(acl), 0o600); err != nil {
		t.Fatal(err)
	}
	m := startMaster(t, "--acl", path)

	r := qmaster(t, "1\n", env("QM_AUTHKEY=ingest-secret"), "map", "--server", m.addr, "--tasks", "jobs", "--timeout", "10s")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "qmaster map: ") || !strings.Contains(lines[0], "permission denied: key ingest may not") {
		t.Errorf("map denied: exit %d, stderr %q; want 1 and the denial alone", r.code, r.stderr)
	}

	r = qmaster(t, "1\n", env("QM_AUTHKEY=mapper-secret"), "map", "--server", m.addr, "--tasks", "jobs", "--timeout", "300ms")
	if want := "qmaster map: timed out after 300ms with 0 of 1 results\n"; r.code != 1 || r.stderr != want {
		t.Errorf("map timed out: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	// Its task was cancelled with the queue: no worker gets it.
	r = qmaster(t, "", env("QM_AUTHKEY=worker-secret"), "get", "--server", m.addr, "--timeout", "100ms", "jobs")
	if r.code == 0 || r.stdout != "" {
		t.Errorf("get of the timed-out map's task: exit %d, stdout %q, stderr %q; want nothing", r.code, r.stdout, r.stderr)
	}

	r = qmaster(t, "1\n", env("QM_AUTHKEY=nodelete-secret"), "map", "--server", m.addr, "--tasks", "jobs", "--timeout", "300ms")
	re := regexp.MustCompile(`^qmaster map: timed out after 300ms with 0 of 1 results \(and delete result queue map-\w+: permission denied: key nodelete may not delete map-\w+; its 1 task not answered still run, for no one\)\n$`)
	if r.code != 1 || !re.MatchString(r.stderr) {
		t.Errorf("map timed out without delete: exit %d, stderr %q; want 1 and %s", r.code, r.stderr, re)
	}
}

// A SIGHUP of a master without --acl is logged and ignored (a log
// rotation, a "systemctl reload"): by default it killed the master, and
// one without a data directory lost its queues.
func TestE2EHangupWithoutACL(t *testing.T) {
	m := startMaster(t)
	r := qmaster(t, "", env("QM_AUTHKEY="+testKey), "put", "--server", m.addr, "jobs", "1")
	if r.code != 0 {
		t.Fatalf("put: exit %d: %s", r.code, r.stderr)
	}
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(m.stderr.String(), "SIGHUP ignored") {
			return errors.New("no log line of the SIGHUP in:\n" + m.stderr.String())
		}
		return nil
	})
	r = qmaster(t, "", env("QM_AUTHKEY="+testKey), "get", "--server", m.addr, "jobs")
	if r.code != 0 || r.stdout != "1\n" {
		t.Fatalf("get after the SIGHUP: exit %d, stdout %q, stderr %q; want the task put before", r.code, r.stdout, r.stderr)
	}
}
