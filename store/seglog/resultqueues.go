package seglog

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qm-dev/qm/store"
)

// resultQueuesFile names the file that maps each task queue to the result
// queue its workers last named: one "queue<TAB>result queue" a line,
// sorted (a queue name has no control character). Like pausedFile, it is
// kept apart from the log so that it adds no record a qmaster of an older
// format could not read: a new mapping is rare (a new queue, or workers
// moved to another result queue), and the file is written whole each
// time.
const resultQueuesFile = "RESULTQUEUES"

// loadResultQueues reads the result queues; none if the file is missing.
// Lines it cannot read (an edit by hand) are skipped and said in warn; a
// task queue named twice takes its last line's result queue.
func (l *Log) loadResultQueues() (rqs map[string]string, warn error, err error) {
	path := filepath.Join(l.dir, resultQueuesFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var bad []int
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		q, rq, ok := strings.Cut(line, "\t")
		if !ok || q == "" || rq == "" || strings.Contains(rq, "\t") {
			bad = append(bad, i+1)
			continue
		}
		if rqs == nil {
			rqs = make(map[string]string)
		}
		rqs[q] = rq
	}
	if len(bad) > 0 {
		warn = fmt.Errorf("%s: %d lines skipped (first: line %d), each not a task queue, a tab and a result queue", path, len(bad), bad[0])
	}
	l.rqMu.Lock()
	l.resultQueues = maps.Clone(rqs)
	l.rqMu.Unlock()
	return rqs, warn, nil
}

// SetResultQueue implements store.ResultQueueKeeper.
func (l *Log) SetResultQueue(queue, resultQueue string) error {
	l.rqMu.Lock()
	defer l.rqMu.Unlock()
	if l.rqClosed {
		return store.ErrClosed
	}
	if l.resultQueues[queue] == resultQueue && !l.rqUnwritten { // "" is never stored
		return nil
	}
	if resultQueue == "" {
		delete(l.resultQueues, queue)
	} else {
		if l.resultQueues == nil {
			l.resultQueues = make(map[string]string)
		}
		l.resultQueues[queue] = resultQueue
	}
	err := l.writeResultQueues()
	l.rqUnwritten = err != nil
	return err
}

// closeResultQueues writes the result queues a failed write left
// unwritten, and refuses later changes: the directory is released next.
func (l *Log) closeResultQueues() error {
	l.rqMu.Lock()
	defer l.rqMu.Unlock()
	l.rqClosed = true
	if !l.rqUnwritten {
		return nil
	}
	if err := l.writeResultQueues(); err != nil {
		return fmt.Errorf("write %s: %w", resultQueuesFile, err)
	}
	l.rqUnwritten = false
	return nil
}

// writeResultQueues replaces the file of result queues with
// l.resultQueues, fsynced. Called with rqMu held.
func (l *Log) writeResultQueues() error {
	var b []byte
	for _, q := range slices.Sorted(maps.Keys(l.resultQueues)) {
		b = append(b, q...)
		b = append(b, '\t')
		b = append(b, l.resultQueues[q]...)
		b = append(b, '\n')
	}
	return l.replaceFile(resultQueuesFile, b)
}
