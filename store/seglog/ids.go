package seglog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/qm-dev/qm/store"
)

// reservedIDsFile names the file that holds the highest task ID the
// master may have handed out (store.IDReserver), in decimal. Like
// pausedFile, it is kept apart from the log so that it adds no record a
// qmaster of an older format could not read: the master reserves IDs a
// million at a time, so the file is rewritten rarely.
const reservedIDsFile = "IDS"

// loadReservedIDs reads the reserved bound; 0 if the file is missing. A
// file it cannot read (an edit by hand) is said in warn and taken as 0.
func (l *Log) loadReservedIDs() (upTo uint64, warn error, err error) {
	path := filepath.Join(l.dir, reservedIDsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	upTo, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if perr != nil {
		return 0, fmt.Errorf("%s: not a task ID (%w): ignored, so IDs of tasks put just before a crash may be given again", path, perr), nil
	}
	l.idsMu.Lock()
	l.reservedIDs = upTo
	l.idsMu.Unlock()
	return upTo, nil, nil
}

// ReserveIDs implements store.IDReserver.
func (l *Log) ReserveIDs(upTo uint64) error {
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	if upTo <= l.reservedIDs {
		return nil
	}
	if l.idsClosed {
		return store.ErrClosed
	}
	if err := l.replaceFile(reservedIDsFile, []byte(strconv.FormatUint(upTo, 10)+"\n")); err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			err = fmt.Errorf("%w: %w", store.ErrDiskFull, err)
		}
		return fmt.Errorf("reserve task IDs: %w", err)
	}
	l.reservedIDs = upTo
	return nil
}
