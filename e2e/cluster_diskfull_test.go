//go:build linux

package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
)

// A node of a cluster whose disk fills: JetStream shuts itself down on
// that node, the cluster goes on through the other two (the node's own
// gateway included), and the node starts its JetStream again by itself
// once its disk has room, and catches up: with another node killed then,
// puts through it still go through, and every task is there. Before the
// twenty-first session the node stayed without JetStream until qmaster
// was restarted.
func TestClusterNodeWithAFullDisk(t *testing.T) {
	dir := smallDisk(t, "64m")
	nodes := clusterNodes(t)
	full := nodes[0]
	for i, a := range full.args {
		if a == "--data-dir" {
			full.args[i+1] = filepath.Join(dir, "data")
		}
	}
	httpAddr := qmtest.FreeAddrs(t, 1)[0]
	full.args = append(full.args, "--http-addr", httpAddr)
	storing := func(want string) func() bool {
		return func() bool {
			// A scrape that fails (the gateway shutting a connection, a
			// node restarting) is made again on the next look.
			req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/metrics", nil)
			req.Header.Set("Authorization", "Bearer "+authkey)
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return strings.Contains(string(b), "\nqm_jetstream_node_storing "+want+"\n")
		}
	}
	for _, n := range nodes {
		n.start(t)
	}
	for _, n := range nodes {
		n.waitListening(t)
	}

	batch := strings.Repeat(strings.Repeat("x", 2000)+"\n", 200)
	put := func() {
		t.Helper()
		if out, errOut, code := run(t, batch, "put", "big", "--server", full.addr); code != 0 {
			t.Fatalf("put through the full node's gateway: exit %d: %s%s", code, out, errOut)
		}
	}
	puts, failed := 0, 0
	put()
	puts++
	filler := fillDisk(t, dir, 1<<20)
	waitFor(t, 60*time.Second, func() bool {
		// A put may fail while the stream's leader moves off the node.
		if _, _, code := run(t, batch, "put", "big", "--server", full.addr); code == 0 {
			puts++
		} else {
			failed++
		}
		// Out of room for a stream's store, or for a Raft log.
		return strings.Contains(full.p.logs(), "will be DISABLED")
	})
	waitFor(t, 30*time.Second, storing("0"))
	put() // the cluster goes on without the node's JetStream
	puts++
	// Its gateway serves through the other nodes, but its node is not
	// current: a rolling restart would wait.
	if code, body := readyz(t, httpAddr, ""); code != http.StatusOK {
		t.Errorf("/readyz while the node's JetStream is down: %d %s; want 200", code, body)
	}
	if code, body := readyz(t, httpAddr, "?current"); code != http.StatusServiceUnavailable || !strings.Contains(body, "JetStream") {
		t.Errorf("/readyz?current while the node's JetStream is down: %d %s; want 503 with the reason", code, body)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Storing again means current again: JetStream wipes the Raft log of
	// a stream whose write failed, and a node whose log is empty counts
	// for nothing in an election until its leader has sent it the state.
	// (The leader's view of the replica below can be from before the
	// failure: killing the leader on it alone left, once in five runs,
	// two nodes that could never elect one.)
	waitFor(t, 60*time.Second, storing("1"))
	waitFor(t, 30*time.Second, func() bool {
		code, _ := readyz(t, httpAddr, "?current")
		return code == http.StatusOK
	})
	_, stream := streamLeader(t, nodes[1], "big")
	waitFor(t, 60*time.Second, func() bool {
		r := replica(t, nodes[1], stream, full.name)
		return r == "leader" || strings.HasPrefix(r, "current, lag 0")
	})

	// Without one of the two others, the stream needs the node's replica.
	other := nodes[1]
	if leader, _ := streamLeader(t, nodes[2], "big"); leader == nodes[2].name {
		other = nodes[2]
	}
	_ = other.p.cmd.Process.Kill()
	<-other.p.done
	// Puts go through once the two left have a leader (a put in flight
	// when the leader died may wait out the request timeout and fail).
	waitFor(t, 60*time.Second, func() bool {
		if _, _, code := run(t, batch, "put", "big", "--server", full.addr); code != 0 {
			failed++
			return false
		}
		puts++
		return true
	})
	out, errOut, code := run(t, "", "get", "big", "-n", "100000", "--timeout", "30s", "--server", full.addr)
	if code != 0 {
		t.Fatalf("get: exit %d: %s", code, errOut)
	}
	// A put that failed may have stored its tasks, or part of them.
	if got := strings.Count(out, "\n"); got < 200*puts || got > 200*(puts+failed) {
		t.Fatalf("got %d tasks back, want those of the %d puts of 200 that went through, and of the %d that failed at most",
			got, puts, failed)
	}
	for _, said := range []string{"this node's JetStream stopped storing", "this node's JetStream started again", "this node's JetStream is current again"} {
		if i := strings.Index(full.p.logs(), said); i < 0 {
			t.Errorf("the node did not log %q", said)
		} else {
			line, _, _ := strings.Cut(full.p.logs()[i:], "\n")
			t.Log(line)
		}
	}
}

// fillDisk fills the file system of dir but for about leave bytes, with
// a file it returns.
func fillDisk(t *testing.T, dir string, leave int64) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for left := int64(st.Bavail)*int64(st.Bsize) - leave; left > 0; left -= int64(len(chunk)) {
		if _, err := f.Write(chunk[:min(int64(len(chunk)), left)]); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

// A node alone (a cluster of one) whose disk fills keeps its JetStream
// running, but the stream whose write failed stores nothing more, and
// answers none of its puts, until JetStream is started again. Before the
// twenty-first session every later put through it waited 10 s and failed
// as "unavailable", until qmaster was restarted. Now they are refused at
// once as "disk full", and taken again once the disk has room.
func TestNodeAloneWithAFullDisk(t *testing.T) {
	dir := smallDisk(t, "24m")
	ports := qmtest.FreeAddrs(t, 2)
	cluster, httpAddr := ports[0], ports[1]
	node, addr := startMaster(t, "--data-dir", filepath.Join(dir, "data"), "--cluster-listen", cluster, "--cluster-peers", cluster,
		"--http-addr", httpAddr)

	batch := strings.Repeat(strings.Repeat("x", 2000)+"\n", 200)
	put := func() (string, time.Duration, bool) {
		start := time.Now()
		_, errOut, code := run(t, batch, "put", "big", "--server", addr)
		return errOut, time.Since(start), code == 0
	}
	stored := 0
	if _, _, ok := put(); !ok {
		t.Fatal("the first put failed")
	}
	stored++
	filler := fillDisk(t, dir, 1<<20)
	waitFor(t, 90*time.Second, func() bool {
		errOut, took, ok := put()
		if ok {
			stored++
		} else if took > 8*time.Second {
			// The put that met the full disk stalls; it is refused once
			// the node has seen its store break, not after the 10 s
			// request timeout.
			t.Errorf("a put failed after %v: %s", took, errOut)
		}
		return strings.Contains(errOut, "disk full")
	})
	errOut, took, ok := put()
	if ok || !strings.Contains(errOut, "disk full") || took > 5*time.Second {
		t.Fatalf("a put on the full disk: stored %v after %v: %s; want refused at once as disk full", ok, took, errOut)
	}
	if code, body := readyz(t, httpAddr, ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "disk full") {
		t.Errorf("/readyz on the full disk: %d %s; want 503, disk full", code, body)
	}
	if m := httpGet(t, "http://"+httpAddr+"/metrics", authkey); !strings.Contains(m, "\nqm_jetstream_node_storing 0\n") {
		t.Errorf("/metrics on the full disk does not say qm_jetstream_node_storing 0")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() bool {
		_, _, ok := put()
		return ok
	})
	stored++
	if code, body := readyz(t, httpAddr, ""); code != http.StatusOK {
		t.Errorf("/readyz once the disk has room: %d %s; want 200", code, body)
	}
	if m := httpGet(t, "http://"+httpAddr+"/metrics", authkey); !strings.Contains(m, "\nqm_jetstream_node_storing 1\n") {
		t.Errorf("/metrics once the disk has room does not say qm_jetstream_node_storing 1")
	}
	out, errOut, code := run(t, "", "get", "big", "-n", "100000", "--timeout", "30s", "--server", addr)
	if code != 0 {
		t.Fatalf("get: exit %d: %s", code, errOut)
	}
	// A put cut short by the full disk may have stored part of its tasks.
	if got := strings.Count(out, "\n"); got < 200*stored {
		t.Fatalf("got %d tasks back, want at least the %d of %d puts", got, 200*stored, stored)
	}
	if !strings.Contains(node.logs(), "this node's JetStream started again") {
		t.Errorf("the node did not say it started JetStream again")
	}
}

// readyz gets /readyz with query from the HTTP endpoint at addr, and
// returns its status and body.
func readyz(t *testing.T, addr, query string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
