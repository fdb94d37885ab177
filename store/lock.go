package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LockDir takes an exclusive flock on dir itself and on dir/LOCK, and
// writes our pid in LOCK, so that two qmasters never share a data
// directory, whatever each keeps in it (a segment log, or a JetStream
// node's files). The directory's lock holds even if LOCK is deleted (a
// script clearing "stale" locks); LOCK's is what masters before the
// thirty-fourth session take, and says who holds the directory. The
// locks go with the process, so a kill -9 never leaves them stale;
// closing what LockDir returns releases them.
func LockDir(dir string) (io.Closer, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	name := filepath.Join(dir, "LOCK")
	if locksDirs {
		if err := flock(d, name, dir); err != nil {
			d.Close()
			return nil, err
		}
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		d.Close()
		return nil, err
	}
	if err := flock(f, name, dir); err != nil {
		f.Close()
		d.Close()
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return dirLock{d, f}, nil
}

// flock takes an exclusive flock on f, one of dir's locks, or says who
// holds it, as LOCK (name) tells.
func flock(f *os.File, name, dir string) error {
	locked, err := tryLock(f)
	if locked {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	holder := "another process"
	if b, rerr := os.ReadFile(name); rerr == nil {
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
			holder = "process " + strconv.Itoa(pid)
		}
	}
	return fmt.Errorf("%w: %s is held by %s (is another qmaster running on %s?)", ErrLocked, name, holder, dir)
}

// dirLock is what LockDir holds: the directory and its LOCK file.
type dirLock struct{ dir, file *os.File }

func (l dirLock) Close() error {
	return errors.Join(l.file.Close(), l.dir.Close())
}
