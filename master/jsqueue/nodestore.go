package jsqueue

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/qm-dev/qm/store"
)

// A node whose store cannot write (its disk full) stops storing for good:
// JetStream shuts itself down on a node of a cluster (the others go on
// without it), and on a node alone it keeps running but fails every write
// of the stream that failed once, answering none of its puts. Either way
// only starting JetStream again clears it, which JetStream leaves to a
// restart of the process. The node does it itself instead, once its data
// directory has room again: watchStore.

// storeLookEvery is how often the node looks at its store.
const storeLookEvery = 2 * time.Second

// watchStore starts the node's JetStream again once its store, broken by
// a failed write, has room again, until Shutdown. JetStream being off is
// looked at every tick; its health report (streams with a write error)
// only after the node logged an error, as JetStream does on every failed
// write. A store that breaks again within restartQuiet of being started
// again, or that cannot be started, waits twice as long each time (up to
// restartMaxWait) before the next start: a write error that room does not
// cure (a disk gone read-only) is not retried every look.
func (n *Node) watchStore() {
	t := time.NewTicker(storeLookEvery)
	defer t.Stop()
	var (
		seen      int64 // errors logged when last looked at
		broken    string
		brokeAt   time.Time
		restarted time.Time     // when JetStream was last started again
		wait      time.Duration // from brokeAt to the next start
		offLooks  int           // looks in a row with JetStream off and gone
		catching  bool          // started again in a cluster, not yet current
		slowSaid  bool          // a slow catch-up was logged
	)
	backOff := func() { wait = min(max(2*wait, storeLookEvery), restartMaxWait) }
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if broken == "" {
			if catching {
				switch behind := n.behind(); {
				case behind == "":
					catching = false
					n.broken.Store(false)
					n.log.Info("this node's JetStream is current again: its replicas count towards its streams' quorums", "after", time.Since(restarted).Round(time.Millisecond))
				case !slowSaid && time.Since(restarted) > catchUpSlow:
					slowSaid = true
					n.log.Warn("this node's JetStream is not current yet since it was started again; until it is, taking another node down can leave streams without a leader", "for", time.Since(restarted).Round(time.Second), "behind", behind)
				}
			}
			errs := n.natsLog.errors.Load()
			if errs == seen && n.srv.JetStreamEnabled() {
				continue
			}
			why, sure := n.storeBroken()
			if sure {
				seen = errs // else look again: the report may not have reached the streams
			}
			if broken = why; broken == "" {
				continue
			}
			brokeAt, offLooks, catching = time.Now(), 0, false
			n.broken.Store(true)
			if !restarted.IsZero() && brokeAt.Sub(restarted) < restartQuiet {
				backOff()
			} else {
				wait = 0
			}
			n.log.Error("this node's JetStream stopped storing; it is started again once its data directory has room", "why", broken, "dir", n.dataDir)
			if n.peers == 1 {
				err := fmt.Errorf("%w: this node's JetStream store cannot write (%s); puts are taken again once %s has room", store.ErrDiskFull, broken, n.dataDir)
				n.unwritable.Store(&err)
			}
			continue
		}
		if time.Since(brokeAt) < wait {
			continue
		}
		if !n.srv.JetStreamEnabled() {
			// JetStream shuts itself down in a goroutine of its own, and
			// its last steps come after its state is gone: two looks.
			if n.srv.JetStreamConfig() != nil {
				offLooks = 0
				continue
			}
			if offLooks++; offLooks < 2 {
				continue
			}
		}
		free, size, err := diskRoom(n.dataDir)
		if err == nil && free < roomNeeded(size) {
			continue // where room is not known, the backoff paces the starts
		}
		before := n.natsLog.errors.Load()
		if err := n.restartJetStream(); errors.Is(err, errShutFirst) {
			offLooks = 0 // started on a later look, once it is all down
			continue
		} else if err != nil {
			backOff()
			n.log.Warn("this node's JetStream not started again; trying again later", "err", err, "in", wait)
			brokeAt, offLooks = time.Now(), 0
			continue
		}
		n.log.Info("this node's JetStream started again", "free", free)
		n.unwritable.Store(nil)
		// A node of a cluster stores again once it is current: JetStream
		// may have wiped the Raft logs of the streams whose writes failed,
		// and until their leaders have sent it their state again its
		// votes count for nothing, so the other nodes alone make the
		// quorum.
		catching, slowSaid = n.peers > 1, false
		n.broken.Store(catching)
		broken, restarted, seen = "", time.Now(), before // errors logged while it started are looked at
	}
}

// behind says what of the node's JetStream is not current, "" once it
// is: its meta layer and every replica it holds caught up with their
// leaders.
func (n *Node) behind() string {
	h := n.srv.Healthz(&server.HealthzOptions{Details: true})
	if h.Status == "ok" {
		return ""
	}
	var errs []string
	for _, e := range h.Errors {
		errs = append(errs, e.Error)
	}
	if len(errs) == 0 {
		return h.Error
	}
	return strings.Join(errs, "; ")
}

// catchUpSlow is how long a node started again may take to be current
// before it says so.
const catchUpSlow = time.Minute

// A store broken again within restartQuiet of its start waits longer
// before the next, up to restartMaxWait.
const (
	restartQuiet   = time.Minute
	restartMaxWait = 5 * time.Minute
)

// Writable reports why a put of tasks would not be stored now, or nil:
// a node alone whose store cannot write (watchStore) refuses puts at once,
// wrapping store.ErrDiskFull, where JetStream would answer none of them.
// A node of a cluster does not: its gateway puts through the other nodes.
func (n *Node) Writable() error {
	if err := n.unwritable.Load(); err != nil {
		return *err
	}
	return nil
}

// Storing reports whether the node's JetStream stores: false from when
// its store broke until it is started again (watchStore), and in a
// cluster until it is current again.
func (n *Node) Storing() bool { return !n.broken.Load() }

// Current returns why the node is not current with its cluster, or nil:
// it is once its JetStream stores, with its meta layer and every replica
// it holds caught up with their leaders. After a start (of the process,
// or of JetStream by watchStore) that takes seconds, and until then
// taking another node down can leave streams without a leader: a rolling
// restart waits for it (/readyz?current).
func (n *Node) Current() error {
	if !n.srv.JetStreamEnabled() {
		return errors.New("this node's JetStream is not running")
	}
	if !n.Storing() {
		return errors.New("this node's JetStream does not store yet (its data directory was full)")
	}
	if behind := n.behind(); behind != "" {
		return fmt.Errorf("this node's JetStream is not current yet: %s", behind)
	}
	return nil
}

// storeBroken says why the node's JetStream stopped storing, if it did.
// sure says the answer covers every stream: a cluster's health report
// stops at its meta layer's trouble (no leader, or behind) without
// looking at them.
func (n *Node) storeBroken() (why string, sure bool) {
	if !n.srv.JetStreamEnabled() {
		return "JetStream shut down (its store ran out of room, or could not write)", true
	}
	h := n.srv.Healthz(&server.HealthzOptions{Details: true})
	for _, e := range h.Errors {
		if strings.Contains(e.Error, "write error") {
			return e.Error, true
		}
	}
	return "", len(h.Errors) == 0
}

// restartJetStream starts the node's JetStream again, as it was started,
// shutting it down first if it is still running. Its streams are read
// again from the store; in a cluster it rejoins and catches up.
func (n *Node) restartJetStream() error {
	if n.srv.JetStreamEnabled() {
		if err := n.srv.ShutdownJetStream(); err != nil {
			return err
		}
		if n.peers > 1 {
			// Its Raft groups finish stopping after it returns, and a
			// new group of the same name must not meet an old one.
			return errShutFirst
		}
	}
	cfg := n.jsConfig
	cfg.StoreDir = n.dataDir // JetStream adds its own directory
	if err := n.srv.EnableJetStream(&cfg); err != nil {
		_ = n.srv.ShutdownJetStream() // what it started, as nats-server does on a reload
		return err
	}
	return nil
}

// errShutFirst says restartJetStream shut JetStream down, and leaves its
// start to a later look.
var errShutFirst = errors.New("jetstream shut down, to be started on a later look")

// roomNeeded is the free space of a file system of size bytes at which a
// broken store is started again: a tenth of it, at most 256 MiB.
func roomNeeded(size uint64) uint64 { return min(size/10, 256<<20) }
