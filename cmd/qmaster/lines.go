package main

import (
	"bufio"
	"context"
	"io"
	"strings"
)

// inputLine is one item read from the input.
type inputLine struct {
	N    int    // 1-based line number in the input (or argument number)
	Text string // without the line ending
}

// lineReader reads non-blank lines in batches on a goroutine it owns, so
// that its consumer can still select on ctx while the input is slow.
//
// A blocked read of a pipe or terminal cannot be interrupted (os.Stdin
// ignores deadlines), so after ctx ends the consumer stops waiting for the
// goroutine rather than join it: it ends at the next line or at EOF, or
// with the process. Every path that reads the input to its end joins it.
type lineReader struct {
	batches chan []inputLine
	done    chan struct{}
	err     error // read error; valid once batches is closed
}

// readLines starts reading r. A batch ends after maxItems lines, after
// maxBytes bytes, at EOF, or when no more input is buffered, so that
// items typed or trickling in are not held back.
func readLines(ctx context.Context, r io.Reader, maxItems, maxBytes int) *lineReader {
	lr := &lineReader{batches: make(chan []inputLine), done: make(chan struct{})}
	go func() {
		defer close(lr.done)
		defer close(lr.batches)
		lr.err = lr.read(ctx, r, maxItems, maxBytes)
	}()
	return lr
}

func (lr *lineReader) read(ctx context.Context, r io.Reader, maxItems, maxBytes int) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		batch []inputLine
		size  int
		n     int
	)
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			n++
			line = strings.TrimRight(line, "\r\n")
			if n == 1 {
				// Editors on Windows start UTF-8 files with a byte order
				// mark; it is not part of the first item.
				line = strings.TrimPrefix(line, "\ufeff")
			}
			if strings.TrimSpace(line) != "" {
				batch = append(batch, inputLine{N: n, Text: line})
				size += len(line)
			}
		}
		if len(batch) > 0 && (len(batch) >= maxItems || size >= maxBytes || br.Buffered() == 0 || err != nil) {
			select {
			case lr.batches <- batch:
			case <-ctx.Done():
				return ctx.Err()
			}
			batch, size = nil, 0
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
