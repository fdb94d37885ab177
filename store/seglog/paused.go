package seglog

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// pausedFile names the file that lists the paused queues, one a line. It
// is kept apart from the log so that a pause adds no record a qmaster
// of an older format could not read: pauses are rare, and the file is
// written whole each time.
const pausedFile = "PAUSED"

// loadPaused reads the paused queues; none if the file is missing.
func (l *Log) loadPaused() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(l.dir, pausedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// Sorted, as SetPaused's search needs, even if edited by hand.
	names := slices.DeleteFunc(strings.Split(string(b), "\n"), func(s string) bool { return s == "" })
	slices.Sort(names)
	names = slices.Compact(names)
	l.pausedMu.Lock()
	l.paused = names
	l.pausedMu.Unlock()
	return names, nil
}

// SetPaused records that the named queue is paused, or no longer is:
// durable when it returns.
func (l *Log) SetPaused(name string, paused bool) error {
	l.pausedMu.Lock()
	defer l.pausedMu.Unlock()
	i, found := slices.BinarySearch(l.paused, name)
	if found == paused {
		return nil
	}
	names := slices.Clone(l.paused)
	if paused {
		names = slices.Insert(names, i, name)
	} else {
		names = slices.Delete(names, i, i+1)
	}
	if err := l.writePaused(names); err != nil {
		return err
	}
	l.paused = names
	return nil
}

// writePaused replaces the file of paused queues with names, fsynced.
func (l *Log) writePaused(names []string) error {
	var b []byte
	if len(names) > 0 {
		b = []byte(strings.Join(names, "\n") + "\n")
	}
	return l.replaceFile(pausedFile, b)
}

// replaceFile replaces the file name of the data directory with b,
// durably: written to a temporary file, fsynced, renamed over it, and the
// directory fsynced, so that a crash leaves the old file or the new one.
// Empty b removes the file. A temporary file left by a crash is removed by
// the next Load.
func (l *Log) replaceFile(name string, b []byte) error {
	path := filepath.Join(l.dir, name)
	if len(b) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return syncDir(l.dir)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(l.dir)
}
