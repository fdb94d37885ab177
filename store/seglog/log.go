package seglog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qm-dev/qm/store"
)

// Log is the segment-log Store. Create it with Open, then call Load once.
type Log struct {
	dir  string
	opts Options
	lock io.Closer

	mu       sync.Mutex
	buf      []byte       // appended, not yet taken by the writer
	appended store.Ticket // bytes appended since Load
	done     store.Ticket // bytes as durable as the mode promises
	doneCh   chan struct{}
	closed   bool
	maxID    uint64
	maxSeq   int64
	live     int64 // tasks added less tasks deleted
	dumper   store.Dumper

	pausedMu sync.Mutex
	paused   []string // sorted: the paused queues, as pausedFile lists them

	rqMu         sync.Mutex
	resultQueues map[string]string // by task queue, as resultQueuesFile should list them
	rqUnwritten  bool              // the last write failed: the file may lack resultQueues' changes
	rqClosed     bool              // Close began: no more writes

	idsMu       sync.Mutex
	reservedIDs uint64 // as reservedIDsFile holds it
	idsClosed   bool   // Close began: no more writes

	// writeErr, when not nil, is the *error of the last failed write:
	// puts are refused until a retry succeeds.
	writeErr atomic.Pointer[error]

	kick chan struct{} // cap 1: something to write
	stop chan struct{}
	wg   sync.WaitGroup

	// Owned by the writer goroutine (and by Load before it starts).
	seg        *os.File
	segNo      uint64
	off        int64
	pend       []byte
	dirty      bool  // written since the last fsync
	sinceSnap  int64 // log bytes since the last snapshot started
	compacting atomic.Bool
	snapSize   atomic.Int64
	compactCh  chan uint64 // segment numbers to snapshot at
	// compactAfter delays the next compaction after a failed start.
	compactAfter time.Time
}

// Open takes the data directory dir (creating it) for this process. It
// fails with store.ErrLocked if another process holds it.
func Open(dir string, opts Options) (*Log, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lk, err := store.LockDir(dir)
	if err != nil {
		return nil, err
	}
	return &Log{
		dir:       dir,
		opts:      opts.withDefaults(),
		lock:      lk,
		doneCh:    make(chan struct{}),
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		compactCh: make(chan uint64, 1),
	}, nil
}

func segName(n uint64) string  { return fmt.Sprintf("log-%016d", n) }
func snapName(n uint64) string { return fmt.Sprintf("snap-%016d", n) }

// Writable implements store.Store.
func (l *Log) Writable() error {
	if p := l.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Append implements store.Store.
func (l *Log) Append(ops ...store.Op) store.Ticket {
	l.mu.Lock()
	n := len(l.buf)
	if len(ops) > 1 {
		l.buf = appendRecord(l.buf, &store.Op{Kind: kindGroup, Task: store.Task{ID: uint64(len(ops))}})
	}
	for i := range ops {
		op := &ops[i]
		l.buf = appendRecord(l.buf, op)
		switch op.Kind {
		case store.Add:
			l.live++
			l.maxID = max(l.maxID, op.Task.ID)
			l.maxSeq = max(l.maxSeq, op.Task.Seq)
		case store.Move, store.Requeue:
			l.maxSeq = max(l.maxSeq, op.Task.Seq)
		case store.Delete:
			l.live--
		}
	}
	l.appended += store.Ticket(len(l.buf) - n)
	t := l.appended
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return t
}

// Wait implements store.Store.
func (l *Log) Wait(t store.Ticket) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.done < t {
		if l.closed {
			return store.ErrClosed
		}
		if p := l.writeErr.Load(); p != nil {
			return *p
		}
		ch := l.doneCh
		l.mu.Unlock()
		<-ch
		l.mu.Lock()
	}
	return nil
}

// SetDumper implements store.Store.
func (l *Log) SetDumper(d store.Dumper) {
	l.mu.Lock()
	l.dumper = d
	l.mu.Unlock()
}

// Close implements store.Store: it writes and fsyncs what is pending,
// waits for a compaction in progress, and releases the directory.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	l.wg.Wait()
	var err error
	if l.seg != nil {
		err = l.flush(true)
		if cerr := l.seg.Close(); err == nil {
			err = cerr
		}
	}
	if rerr := l.closeResultQueues(); err == nil {
		err = rerr
	}
	l.idsMu.Lock() // a reservation under way ends first
	l.idsClosed = true
	l.idsMu.Unlock()
	l.mu.Lock()
	close(l.doneCh) // wake waiters: they see closed
	l.doneCh = make(chan struct{})
	l.mu.Unlock()
	if cerr := l.lock.Close(); err == nil {
		err = cerr
	}
	return err
}

// run is the writer goroutine: it writes what is appended, fsyncs as the
// mode says, retries after a failure and starts compactions.
func (l *Log) run() {
	defer l.wg.Done()
	var tick <-chan time.Time
	if l.opts.Fsync == FsyncInterval {
		t := time.NewTicker(l.opts.Interval)
		defer t.Stop()
		tick = t.C
	}
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	idle := time.NewTicker(idleEvery)
	defer idle.Stop()
	var lastAppended store.Ticket
	for {
		sync, quiet := false, false
		select {
		case <-l.stop:
			return
		case <-l.kick:
		case <-tick:
			sync = true
		case <-retry.C:
		case <-idle.C:
			l.mu.Lock()
			quiet = l.appended == lastAppended
			lastAppended = l.appended
			l.mu.Unlock()
		}
		if err := l.flush(sync); err != nil {
			retry.Reset(retryEvery)
			continue
		}
		l.maybeCompact(quiet)
	}
}

// flush writes the pending records, fsyncs if the mode (or sync) says so,
// and advances done. Called by the writer goroutine only.
func (l *Log) flush(sync bool) error {
	l.mu.Lock()
	if len(l.pend) == 0 {
		l.pend, l.buf = l.buf, l.pend[:0]
	} else {
		l.pend = append(l.pend, l.buf...)
		l.buf = l.buf[:0]
	}
	target := l.appended
	l.mu.Unlock()

	if len(l.pend) > 0 {
		n, err := l.seg.WriteAt(l.pend, l.off)
		if err != nil {
			// Cut off a partial write so the next try appends cleanly.
			_ = l.seg.Truncate(l.off)
			return l.fail(fmt.Errorf("write %s: %w", l.seg.Name(), err))
		}
		l.off += int64(n)
		l.sinceSnap += int64(n)
		l.pend = l.pend[:0]
		if cap(l.pend) > 4<<20 {
			l.pend = nil // do not keep a burst's buffer for ever
		}
		l.dirty = true
	}
	if l.dirty && (sync || l.opts.Fsync == FsyncAlways) {
		start := time.Now()
		if err := l.seg.Sync(); err != nil {
			return l.fail(fmt.Errorf("fsync %s: %w", l.seg.Name(), err))
		}
		if l.opts.OnSync != nil {
			l.opts.OnSync(time.Since(start))
		}
		l.dirty = false
	}
	if p := l.writeErr.Load(); p != nil {
		l.writeErr.Store(nil)
		l.opts.OnEvent("log writable again", nil, "file", l.seg.Name())
	}
	l.mu.Lock()
	if target > l.done {
		l.done = target
		close(l.doneCh)
		l.doneCh = make(chan struct{})
	}
	l.mu.Unlock()
	return nil
}

// fail records a write error and wakes the waiters, who return it.
func (l *Log) fail(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		err = fmt.Errorf("%w: %w", store.ErrDiskFull, err)
	}
	first := l.writeErr.Load() == nil
	l.writeErr.Store(&err)
	if first {
		l.opts.OnEvent("log write failed; puts are refused until it succeeds (retrying)", err)
	}
	l.mu.Lock()
	close(l.doneCh)
	l.doneCh = make(chan struct{})
	l.mu.Unlock()
	return err
}

// createSegment creates segment n with its header, synced, and makes it
// the one written to. The previous one is synced first, so that only the
// newest segment can ever have a torn tail.
func (l *Log) createSegment(n uint64) error {
	if l.seg != nil && l.dirty {
		if err := l.seg.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", l.seg.Name(), err)
		}
		l.dirty = false
	}
	name := filepath.Join(l.dir, segName(n))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(logMagic), 0); err != nil {
		f.Close()
		os.Remove(name)
		return err // it names the file
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(name)
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		os.Remove(name)
		return err
	}
	if l.seg != nil {
		l.seg.Close()
	}
	l.seg, l.segNo, l.off = f, n, headerLen
	return nil
}

func syncDir(dir string) error {
	if !syncsDirs {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
