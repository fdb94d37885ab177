package seglog

import (
	"fmt"
	"time"
)

// FsyncMode says when the log is fsynced.
type FsyncMode int

// The fsync modes. In every mode a Wait returns only once its records are
// written to the kernel, so a crash of the process loses nothing that was
// acknowledged. They differ on a crash of the machine (power, kernel).
const (
	// FsyncAlways fsyncs before a Wait returns: a machine crash loses
	// nothing acknowledged. Concurrent writers share each fsync.
	FsyncAlways FsyncMode = iota
	// FsyncInterval fsyncs every Options.Interval: a machine crash loses up
	// to that much acknowledged work.
	FsyncInterval
	// FsyncNever leaves flushing to the kernel (and fsyncs on Close and at
	// compaction): a machine crash loses what the kernel had not written,
	// typically up to 30 s on Linux.
	FsyncNever
)

// ParseFsync parses "always", "never", "interval" or a duration such as
// "100ms" (interval with that period); "interval" alone means
// DefaultInterval.
func ParseFsync(s string) (FsyncMode, time.Duration, error) {
	switch s {
	case "always":
		return FsyncAlways, 0, nil
	case "never":
		return FsyncNever, 0, nil
	case "interval":
		return FsyncInterval, DefaultInterval, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, 0, fmt.Errorf("fsync mode %q: want always, interval, never or a positive duration such as 100ms", s)
	}
	return FsyncInterval, d, nil
}

func (m FsyncMode) String() string {
	switch m {
	case FsyncAlways:
		return "always"
	case FsyncInterval:
		return "interval"
	case FsyncNever:
		return "never"
	}
	return fmt.Sprintf("FsyncMode(%d)", int(m))
}

// Defaults for zero Options fields.
const (
	DefaultInterval   = 100 * time.Millisecond
	DefaultCompactMin = 64 << 20
	// drainedCompact is how much log a store with no live task keeps
	// before it compacts to give the space back.
	drainedCompact = 1 << 20
	// retryEvery is how often a failed write (a full disk) is retried.
	retryEvery = 250 * time.Millisecond
	// idleEvery is how often the writer checks for a quiet store with no
	// live task, to give all of its space back.
	idleEvery = time.Second
)

// Options configure a Log. Zero values mean the defaults.
type Options struct {
	// Fsync says when the log is fsynced; the zero value is FsyncAlways.
	Fsync FsyncMode
	// Interval is the fsync period of FsyncInterval; 0 means
	// DefaultInterval.
	Interval time.Duration
	// CompactMin is the least log, in bytes, written since the last
	// snapshot before a compaction; 0 means DefaultCompactMin (64 MiB).
	// A store with no live task compacts after 1 MiB whatever this is.
	CompactMin int64
	// OnEvent, if not nil, is told of what the operator should know: a
	// torn tail dropped at recovery, a write failing (disk full) and
	// recovering, a compaction failing. It is called from the store's
	// goroutines with no lock held. attrs are slog-style key-value pairs.
	OnEvent func(msg string, err error, attrs ...any)
	// OnSync, if not nil, is told how long each fsync of the log's
	// records took (for a latency metric). It is called from the writer
	// goroutine: it must be quick.
	OnSync func(time.Duration)
}

// Validate reports an invalid field.
func (o Options) Validate() error {
	switch {
	case o.Fsync < FsyncAlways || o.Fsync > FsyncNever:
		return fmt.Errorf("seglog options: Fsync: unknown mode %d", int(o.Fsync))
	case o.Interval < 0:
		return fmt.Errorf("seglog options: Interval must be >= 0, got %v", o.Interval)
	case o.CompactMin < 0:
		return fmt.Errorf("seglog options: CompactMin must be >= 0, got %d", o.CompactMin)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.CompactMin == 0 {
		o.CompactMin = DefaultCompactMin
	}
	if o.OnEvent == nil {
		o.OnEvent = func(string, error, ...any) {}
	}
	return o
}
