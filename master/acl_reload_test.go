package master_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// TestSetACL: after SetACL, a connection whose key remains goes on with
// the key's new permissions; one whose key was removed is closed, and
// its key no longer authenticates.
func TestSetACL(t *testing.T) {
	addr, srv := startACLMaster(t, aclFile)
	ctx := ctxFor(t, 10*time.Second)
	ingest := dialACL(t, addr, "ingest-secret", "producer")
	worker := dialACL(t, addr, "worker-secret", "worker")
	if _, err := worker.Get(ctx, "jobs.urgent", wire.GetOptions{}); !errors.Is(err, wire.ErrPermissionDenied) {
		t.Fatalf("worker get jobs.urgent before: %v", err)
	}
	if _, err := srv.SetACL(nil); err == nil {
		t.Fatal("SetACL(nil): no error")
	}
	closed, err := srv.SetACL(parseACL(t, `
[[key]]
name = "worker"
secret = "worker-secret"
get = ["jobs", "jobs.*"]
`))
	if err != nil || closed != 1 {
		t.Fatalf("SetACL: %d closed, %v; want 1", closed, err)
	}
	select {
	case <-ingest.Done():
	case <-ctx.Done():
		t.Fatal("the connection of the removed key is still open")
	}
	if _, err := worker.Get(ctx, "jobs.urgent", wire.GetOptions{}); err != nil {
		t.Fatalf("worker get jobs.urgent after: %v", err)
	}
	if _, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte("ingest-secret")}); !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("dial with the removed key: %v, want ErrAuthFailed", err)
	}
}

// TestSetACLEndsAWaitingGetsRight: gets waiting when a reload takes their
// key's right to get from the queue end at once with the denial, having
// taken nothing: the task put after goes to a key that may, at its first
// attempt, on a single master and through a gateway (where a task taken
// and given back would have used an attempt).
func TestSetACLEndsAWaitingGetsRight(t *testing.T) {
	t.Run("master", func(t *testing.T) {
		testSetACLEndsWaitingGets(t, master.Config{ACL: parseACL(t, aclFile)})
	})
	t.Run("gateway", func(t *testing.T) {
		testSetACLEndsWaitingGets(t, gatewayConfig(startJetStream(t), master.Config{ACL: parseACL(t, aclFile)}))
	})
}

func testSetACLEndsWaitingGets(t *testing.T, cfg master.Config) {
	addr, srv := qmtest.StartMaster(t, cfg)
	ctx := ctxFor(t, 10*time.Second)
	const getters = 3
	got := make(chan error, getters)
	for range getters {
		worker := dialACL(t, addr, "worker-secret", "worker")
		go func() {
			ts, err := worker.Get(ctx, "jobs", wire.GetOptions{Timeout: 8 * time.Second})
			if err == nil {
				err = fmt.Errorf("took %d tasks", len(ts))
			}
			got <- err
		}()
	}
	ops := dialACL(t, addr, "ops-secret", "admin")
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st, err := ops.Stats(ctx, "jobs")
		if err != nil || len(st) != 1 || st[0].Consumers < getters {
			return fmt.Errorf("stats %+v, %v; want %d gets waiting", st, err, getters)
		}
		return nil
	})
	// The worker's key may no longer get from jobs; a new key may.
	if _, err := srv.SetACL(parseACL(t, strings.Replace(aclFile, `get = ["jobs"]`, `get = ["jobs.other"]`, 1)+`
[[key]]
name = "other"
secret = "other-secret"
get = ["jobs"]
`)); err != nil {
		t.Fatal(err)
	}
	for range getters {
		if err := <-got; !errors.Is(err, wire.ErrPermissionDenied) {
			t.Fatalf("a waiting get: %v, want permission denied", err)
		}
	}
	ingest := dialACL(t, addr, "ingest-secret", "producer")
	if _, err := ingest.Put(ctx, "jobs", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	other := dialACL(t, addr, "other-secret", "worker")
	ts, err := other.Get(ctx, "jobs", wire.GetOptions{Timeout: 5 * time.Second})
	if err != nil || len(ts) != 1 || ts[0].Attempt != 1 {
		t.Fatalf("get by the key that may: %+v, %v; want the task at its first attempt", ts, err)
	}
}

// TestSetACLEndsAWaitingPythonGetsRight is TestSetACLEndsAWaitingGetsRight
// for a Python BaseManager client: its blocked get raises PermissionError.
func TestSetACLEndsAWaitingPythonGetsRight(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	addr, srv := startACLMaster(t, aclFile)
	ctx := ctxFor(t, pyTimeout)
	cmd := py.Command(t, pyTimeout, `
import sys
from multiprocessing.managers import BaseManager, RemoteError
class M(BaseManager): pass
M.register('get_jobs_queue')
host, port = sys.argv[1].rsplit(':', 1)
m = M(address=(host, int(port)), authkey=b'worker-secret')
m.connect()
try:
    print('took', m.get_jobs_queue().get(timeout=20))
except RemoteError as e:
    print([l for l in str(e).splitlines() if 'Error:' in l][-1].strip())
`, addr)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ops := dialACL(t, addr, "ops-secret", "admin")
	qmtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		st, err := ops.Stats(ctx, "jobs")
		if err != nil || len(st) != 1 || st[0].Consumers != 1 {
			return fmt.Errorf("stats %+v, %v; want the get waiting", st, err)
		}
		return nil
	})
	if _, err := srv.SetACL(parseACL(t, strings.Replace(aclFile, `get = ["jobs"]`, `get = ["jobs.other"]`, 1))); err != nil {
		t.Fatal(err)
	}
	ingest := dialACL(t, addr, "ingest-secret", "producer")
	if _, err := ingest.Put(ctx, "jobs", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python: %v\n%s", err, out.String())
	}
	if want := "PermissionError: permission denied: key worker may not get from jobs\n"; out.String() != want {
		t.Fatalf("python printed %q, want %q", out.String(), want)
	}
	if st, err := ops.Stats(ctx, "jobs"); err != nil || st[0].Ready != 1 {
		t.Fatalf("stats %+v, %v; want the task ready still", st, err)
	}
}

// reloadFile is aclFile with ingest allowed to read the replies; the
// temp key comes and goes in TestSetACLUnderLoad.
const reloadFile = `
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

const reloadTemp = `
[[key]]
name = "temp"
secret = "temp-secret"
get = ["*"]
`

// TestSetACLUnderLoad: rules swapped over and over while a producer puts
// and a worker completes: no task is lost, no result either, and no
// connection of a remaining key drops; the connections of the key that
// comes and goes are closed each time it goes.
func TestSetACLUnderLoad(t *testing.T) {
	addr, srv := startACLMaster(t, reloadFile)
	ctx := ctxFor(t, 60*time.Second)
	producer := dialACL(t, addr, "ingest-secret", "producer")
	worker := dialACL(t, addr, "worker-secret", "worker")
	const total = 2000

	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wctx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	wg.Add(1)
	go func() { // the worker
		defer wg.Done()
		for wctx.Err() == nil {
			ts, err := worker.Get(wctx, "jobs", wire.GetOptions{Max: 16, Timeout: 50 * time.Millisecond})
			if err != nil {
				if wctx.Err() == nil {
					errs <- err
				}
				return
			}
			done := make([]wire.Completion, len(ts))
			for i, task := range ts {
				done[i] = wire.Completion{ID: task.ID, Value: task.Payload}
			}
			if len(done) > 0 {
				if err := worker.Complete(wctx, "jobs", "", done); err != nil {
					if wctx.Err() == nil { // not the test stopping it
						errs <- err
					}
					return
				}
			}
		}
	}()
	wg.Add(1)
	go func() { // the producer
		defer wg.Done()
		for i := 0; i < total; i += 20 {
			items := make([]any, 20)
			for j := range items {
				items[j] = i + j
			}
			if _, err := producer.Put(ctx, "jobs", items, wire.PutOptions{ReplyTo: "jobs.replies"}); err != nil {
				errs <- err
				return
			}
		}
	}()
	reloadsDone := make(chan struct{})
	go func() { // the operator, rotating
		defer close(reloadsDone)
		for i := 0; ctx.Err() == nil && i < 30; i++ {
			file := reloadFile
			if i%2 == 0 {
				file += reloadTemp
			}
			rules := parseACL(t, file)
			var temp *wire.Client
			if i%2 == 0 {
				if _, err := srv.SetACL(rules); err != nil {
					errs <- err
					return
				}
				c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte("temp-secret")})
				if err != nil {
					errs <- err
					return
				}
				temp = c
				rules = parseACL(t, reloadFile)
			}
			closed, err := srv.SetACL(rules)
			if err != nil {
				errs <- err
				return
			}
			if temp != nil {
				select {
				case <-temp.Done():
				case <-time.After(5 * time.Second):
					errs <- errors.New("temp's connection was not closed when its key went")
					return
				}
				temp.Close()
				if closed != 1 {
					errs <- errors.New("SetACL without temp closed other than temp's connection")
					return
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	seen := make(map[uint64]int)
	for len(seen) < total {
		ts, err := producer.Get(ctx, "jobs.replies", wire.GetOptions{Max: 100, Timeout: 100 * time.Millisecond, NoAck: true})
		if err != nil {
			t.Fatalf("get replies after %d: %v", len(seen), err)
		}
		for _, task := range ts {
			r, err := wire.DecodeResult(task.Payload)
			if err != nil {
				t.Fatalf("result: %v", err)
			}
			seen[r.TaskID]++
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
	}
	<-reloadsDone
	stopWorker()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, c := range []*wire.Client{producer, worker} {
		select {
		case <-c.Done():
			t.Fatal("a connection of a remaining key was closed")
		default:
		}
	}
}

// TestSetACLWithoutAuth: a master serving without authentication has no
// keys to change.
func TestSetACLWithoutAuth(t *testing.T) {
	_, srv := qmtest.StartMaster(t, master.Config{InsecureNoAuth: true})
	if _, err := srv.SetACL(parseACL(t, reloadFile)); err == nil {
		t.Fatal("SetACL on a master without authentication: no error")
	}
}

// TestInsecureNoAuthWithAuthkey: InsecureNoAuth serves without
// authentication even if an Authkey is set, as before keys had names.
func TestInsecureNoAuthWithAuthkey(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{InsecureNoAuth: true, Authkey: []byte("unused")})
	c, err := wire.Dial(ctxFor(t, 5*time.Second), wire.Config{Addr: addr})
	if err != nil {
		t.Fatalf("dial without a key: %v", err)
	}
	defer c.Close()
	if _, err := c.Purge(ctxFor(t, 5*time.Second), "jobs"); err != nil && !errors.Is(err, wire.ErrUnknownQueue) {
		t.Fatalf("purge without authentication: %v", err)
	}
}
