package worker

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/jsonval"
)

// The child's side of the --stdio protocol (docs/WORKERS.md): one line per
// task, either a result or an error line.
const (
	// errorPrefix starts a line that fails the attempt: "!error TEXT".
	// No JSON text starts with '!', so a child that prints only JSON
	// cannot send one by accident.
	errorPrefix = "!error"
	// retryPrefix starts a line that fails the attempt and says when to
	// try again: "!retry SECONDS TEXT" (worker.RetryAfter).
	retryPrefix = "!retry"
	// failPrefix starts a line that fails the attempt for good: "!fail
	// TEXT" (worker.NoRetry).
	failPrefix = "!fail"
	// pipelineHello is the line a child may send before its first
	// answer to take tasks ahead: it promises exactly one line per task.
	pipelineHello = "!pipeline"
	// controlByte starts every line reserved for the protocol.
	controlByte = '!'
)

// errPipelineHello is the pipelineHello line: not an answer.
var errPipelineHello = errors.New("pipeline hello")

// errProtocol is the family of outputs that break the --stdio protocol:
// the child is restarted, since its later lines can no longer be matched
// with tasks.
var errProtocol = errors.New("broke the stdio protocol")

// childError is an attempt failed by the child itself, with an error
// line, a retry line that also says how long to wait, or a fail line.
type childError struct {
	text       string
	retryAfter time.Duration
	noRetry    bool
}

func (e *childError) Error() string { return e.text }

// maxRetryAfter bounds a child's retry-after, as a queue's backoff is.
const maxRetryAfter = 365 * 24 * time.Hour

// parseResultLine reads one line of a child's output, without its '\n':
// the task's result, a *childError, or an error that wraps errProtocol.
func parseResultLine(line []byte) (any, error) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > 0 && line[0] == controlByte {
		if string(bytes.TrimRight(line, " \t")) == pipelineHello {
			return nil, errPipelineHello
		}
		var retryAfter time.Duration
		rest, ok := bytes.CutPrefix(line, []byte(errorPrefix))
		noRetry := false
		if !ok {
			rest, noRetry = bytes.CutPrefix(line, []byte(failPrefix))
			ok = noRetry
		}
		if !ok {
			if rest, ok = bytes.CutPrefix(line, []byte(retryPrefix)); ok {
				var err error
				if retryAfter, rest, err = parseRetry(rest); err != nil {
					return nil, fmt.Errorf("%w: %v in %s", errProtocol, err, quoteStart(line))
				}
			}
		}
		if !ok || (len(rest) > 0 && rest[0] != ' ' && rest[0] != '\t') {
			return nil, fmt.Errorf("%w: unknown control line %s", errProtocol, quoteStart(line))
		}
		text := string(bytes.TrimSpace(rest))
		if !utf8.ValidString(text) {
			text = string(bytes.ToValidUTF8([]byte(text), []byte("\uFFFD")))
		}
		if text == "" {
			text = "the child reported an error"
		}
		return nil, &childError{text: text, retryAfter: retryAfter, noRetry: noRetry}
	}
	if v, ok := parseInt(line); ok {
		return v, nil
	}
	v, err := jsonval.ParseStrict(line)
	if err != nil {
		return nil, fmt.Errorf("%w: output line is not JSON: %s (a stdio child writes only its answers to stdout; banners and logs go to stderr)", errProtocol, quoteStart(line))
	}
	return v, nil
}

// parseRetry reads the seconds of a retry line, " SECONDS[ TEXT]", and
// returns them and the rest of the line.
func parseRetry(rest []byte) (time.Duration, []byte, error) {
	if len(rest) == 0 || rest[0] != ' ' && rest[0] != '\t' {
		return 0, nil, errors.New("a retry line without its seconds")
	}
	rest = bytes.TrimLeft(rest, " \t")
	end := bytes.IndexAny(rest, " \t")
	if end < 0 {
		end = len(rest)
	}
	secs, err := strconv.ParseFloat(string(rest[:end]), 64)
	if err != nil || secs < 0 || math.IsNaN(secs) || math.IsInf(secs, 0) {
		return 0, nil, fmt.Errorf("retry seconds %q are not a number >= 0", rest[:end])
	}
	// At least a nanosecond: 0 is "unset" (the queue's backoff) in the
	// protocol, where "!retry 0" means at once.
	d := max(min(time.Duration(min(secs, maxRetryAfter.Seconds())*float64(time.Second)), maxRetryAfter), time.Nanosecond)
	if end == len(rest) {
		return d, nil, nil
	}
	return d, rest[end:], nil
}

// quoteStart quotes the start of a line for an error message.
func quoteStart(line []byte) string {
	const most = 200
	if len(line) <= most {
		return fmt.Sprintf("%q", line)
	}
	cut := most
	for cut > 0 && !utf8.RuneStart(line[cut]) {
		cut--
	}
	return fmt.Sprintf("%q... (%d bytes)", line[:cut], len(line))
}

// parseInt reads a line that is only a JSON integer that fits in 18
// digits, the commonest result, without a JSON decoder.
func parseInt(line []byte) (int64, bool) {
	digits := line
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 18 || (digits[0] == '0' && len(digits) > 1) {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if len(line) > len(digits) {
		n = -n
	}
	return n, true
}
