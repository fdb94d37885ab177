package seglog

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/qm-dev/qm/store"
)

// maybeCompact starts a compaction when the log since the last snapshot
// outgrew it, or when no task is live and the log grew by 1 MiB or has
// been quiet (appended nothing) for a while. Called by the writer
// goroutine after a successful flush: it starts a new segment, then hands
// its number to the compactor goroutine, which snapshots the live tasks.
func (l *Log) maybeCompact(quiet bool) {
	if l.compacting.Load() || time.Now().Before(l.compactAfter) {
		return
	}
	l.mu.Lock()
	live, dump := l.live, l.dumper
	l.mu.Unlock()
	if dump == nil {
		return
	}
	due := l.sinceSnap > max(l.opts.CompactMin, l.snapSize.Load()) ||
		live <= 0 && (l.sinceSnap > drainedCompact || quiet && l.sinceSnap > 0)
	if !due {
		return
	}
	if err := l.createSegment(l.segNo + 1); err != nil {
		l.opts.OnEvent("compaction could not start a segment; retrying later", err)
		l.compactAfter = time.Now().Add(time.Second)
		return
	}
	l.sinceSnap = 0
	l.compacting.Store(true)
	l.compactCh <- l.segNo // cap 1, and empty: compacting was false
}

// compactor writes the snapshots maybeCompact asks for, until Close.
func (l *Log) compactor() {
	defer l.wg.Done()
	for {
		select {
		case <-l.stop:
			return
		case n := <-l.compactCh:
			start := time.Now()
			if err := l.snapshot(n); errors.Is(err, errStopping) {
				return
			} else if err != nil {
				l.opts.OnEvent("compaction failed; the log is kept and compaction retried later", err, "segment", n)
			} else {
				l.opts.OnEvent("compacted", nil, "snapshot", snapName(n), "bytes", l.snapSize.Load(), "took", time.Since(start).Round(time.Millisecond))
			}
			l.compacting.Store(false)
			select { // the log may have outgrown the new snapshot already
			case l.kick <- struct{}{}:
			default:
			}
		}
	}
}

// errStopping ends a compaction that waited for the writer as the log
// closed.
var errStopping = errors.New("seglog: closing")

// waitWritten returns once the log is as durable as its mode promises up
// to t (Wait), or the log closes, or the disk is full (the compaction
// then gives its snapshot's room back). Through other write errors it
// waits: the writer tries again.
func (l *Log) waitWritten(t store.Ticket) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.done < t {
		if p := l.writeErr.Load(); p != nil && errors.Is(*p, store.ErrDiskFull) {
			return *p
		}
		ch := l.doneCh
		l.mu.Unlock()
		select {
		case <-ch:
		case <-l.stop:
			l.mu.Lock()
			return errStopping
		}
		l.mu.Lock()
	}
	return nil
}

// snapshot dumps every live task into snapshot n and then deletes the
// segments before n and the older snapshots. Every record of a segment
// before n was appended before the dump began, so the dump reflects it;
// records appended since are in segment n or later, and replay over it.
func (l *Log) snapshot(n uint64) error {
	l.mu.Lock()
	dump := l.dumper
	l.mu.Unlock()
	name := filepath.Join(l.dir, snapName(n))
	tmp := name + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	w.WriteString(snapMagic)
	var (
		buf   []byte
		count int
		op    store.Op
	)
	err = dump(func(o *store.Op) error {
		switch o.Kind {
		case store.Add:
			count++
		case store.Key, store.SetPolicy, store.Deleted:
		default:
			return fmt.Errorf("seglog: a dump emitted a %v op", o.Kind)
		}
		buf = appendRecord(buf[:0], o)
		_, err := w.Write(buf)
		return err
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	// Read after the dump: at least the IDs and Seqs of every task in it,
	// and every record the dump relied on (a completion's tasks, dumped
	// until their acks and results were appended: master/queue).
	l.mu.Lock()
	op = store.Op{Kind: kindMeta, Task: store.Task{ID: l.maxID, Seq: l.maxSeq, Attempts: count}}
	relied := l.appended
	l.mu.Unlock()
	if _, err := w.Write(appendRecord(buf[:0], &op)); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	size, _ := f.Seek(0, 2)
	if err := f.Close(); err != nil {
		return err
	}
	// The snapshot replaces the segments before n only once what the
	// dump relied on is written: else a crash would leave a task a
	// completion took out of memory in neither.
	if err := l.waitWritten(relied); err != nil {
		return err
	}
	if l.opts.Fsync != FsyncAlways {
		// On disk, too: a machine crash must not keep the snapshot and
		// lose those records. (Segment n is the only one not fsynced
		// already: a segment is fsynced as the next one starts.)
		if err := syncFile(filepath.Join(l.dir, segName(n))); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	ok = true
	if err := syncDir(l.dir); err != nil {
		return err
	}
	l.snapSize.Store(size)
	ls, err := l.list()
	if err != nil {
		return err
	}
	for _, s := range ls.segs {
		if s < n {
			os.Remove(filepath.Join(l.dir, segName(s)))
		}
	}
	for _, s := range ls.snaps {
		if s < n {
			os.Remove(filepath.Join(l.dir, snapName(s)))
		}
	}
	return nil
}
