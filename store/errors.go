package store

import "errors"

var (
	// ErrDiskFull is returned, wrapped with the file, when the store cannot
	// write because the disk is full. Nothing stored before is lost, and
	// the store retries until space returns.
	ErrDiskFull = errors.New("disk full")

	// ErrLocked is returned by Open when another process holds the data
	// directory.
	ErrLocked = errors.New("data directory in use")

	// ErrCorrupt is returned, wrapped with the file and offset, when a
	// stored file is damaged anywhere but at the torn tail of the log.
	ErrCorrupt = errors.New("corrupt data")

	// ErrNewerFormat is returned by Load, wrapped with the file, when a
	// file is in a format newer than this qmaster reads.
	ErrNewerFormat = errors.New("written by a newer qmaster")

	// ErrClosed is returned by Wait after Close.
	ErrClosed = errors.New("store closed")
)
