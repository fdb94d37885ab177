// Package seglog is a [store.Store] kept as an append-only segment log with
// snapshots, the way beanstalkd's binlog and Redis's append-only file keep
// their state.
//
// A data directory holds:
//
//	LOCK                    flock'ed by the process that holds the directory
//	log-0000000000000007    the records appended since snapshot 7
//	snap-0000000000000007   every live task when segment 7 was started
//	PAUSED                  the paused queues, one a line (if any)
//	RESULTQUEUES            each task queue and its workers' result queue (if any)
//
// Every change is a record appended to the newest segment. A record is a
// 4-byte little-endian body length, the CRC-32C of the body, and the body
// (a kind byte and varint fields). Appends from many goroutines are
// gathered in one buffer and written (and fsynced, with FsyncAlways) by one
// goroutine, so concurrent producers share one write and one fsync: group
// commit.
//
// Compaction bounds the disk: once the log written since the last snapshot
// is larger than that snapshot (and than Options.CompactMin), or once no
// task is live, the writer starts a new segment and a second goroutine
// dumps the live tasks into a new snapshot; when that is synced and
// renamed into place, the older segments and snapshot are deleted. Records
// carry absolute values keyed by task ID, so replaying the records written
// while the snapshot was taken over it gives the right state.
//
// Recovery reads the newest snapshot and replays the segments after it. A
// bad record at the end of the newest segment is a torn write: it and
// everything after it are dropped (and reported in Meta.Warnings through
// Options.OnEvent). A bad record anywhere else is an error that names the
// file and offset.
package seglog
