package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/wire"
)

const (
	// stderrTail is how much of a failed command's stderr its error keeps.
	stderrTail = 2 << 10
	// maxOutput bounds a command's stdout, since it becomes one message.
	maxOutput = wire.DefaultMaxMessageSize / 2
	// waitDelay is how long a command's output may stay open after it
	// exited or was killed (held by a process it left behind).
	waitDelay = 2 * time.Second
)

// Command returns a Handler that runs argv (no shell) once per task.
//
// The payload goes to the command's stdin: a string as its raw text, bytes
// as they are, anything else as one line of JSON; QM_PAYLOAD in its
// environment says which ("text", "bytes" or "json"), so that a program
// can tell the string "123" from the number. Its stdout, less a trailing
// newline, is the result: the value if it is JSON, else the string. The
// environment adds QM_TASK_ID, QM_ATTEMPT and QM_QUEUE too.
//
// A non-zero exit fails the task with "exit status N: " and the last 2 KiB
// of stderr; an exit status given to NoRetryExit fails it not to be
// retried (NoRetry). A non-zero exit whose stdout is one failure line of
// the stdio protocol ("!error TEXT", "!retry SECONDS TEXT", "!fail TEXT")
// fails it as the line says, with TEXT and the end of stderr: the Python
// helper's Retry and Fail so work in command mode too. A timeout (0 is none) fails it with "timed out after
// D". On a timeout, or when ctx ends, the command's whole process group is
// killed, so that nothing it started outlives it. On Linux the command is
// killed too if the worker dies without stopping it (SIGKILL, a crash), as
// its task then runs again elsewhere.
func Command(argv []string, timeout time.Duration, opts ...CommandOption) Handler {
	argv = slices.Clone(argv)
	var o commandOptions
	for _, opt := range opts {
		opt(&o)
	}
	return func(ctx context.Context, t Task) (any, error) {
		if len(argv) == 0 {
			return nil, errors.New("command: no program to run")
		}
		input, format, err := commandInput(t)
		if err != nil {
			return nil, NoRetry(err) // every attempt would fail alike
		}
		runCtx := ctx
		if timeout > 0 {
			var cancel context.CancelFunc
			runCtx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		cmd := exec.CommandContext(runCtx, argv[0], argv[1:]...)
		ownProcessGroup(cmd)
		cmd.WaitDelay = waitDelay
		cmd.Env = append(os.Environ(),
			"QM_TASK_ID="+strconv.FormatUint(t.ID, 10),
			"QM_ATTEMPT="+strconv.Itoa(t.Attempt),
			"QM_QUEUE="+t.Queue,
			"QM_PAYLOAD="+format,
		)
		cmd.Stdin = bytes.NewReader(input)
		stdout := &limitedBuffer{max: maxOutput}
		stderr := &tailBuffer{max: stderrTail}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		exited, err := startOwned(cmd)
		if err == nil {
			err = <-exited
		}
		switch {
		case err == nil && stdout.overflow:
			return nil, fmt.Errorf("%s: output longer than %d bytes", argv[0], maxOutput)
		case err == nil:
			out := strings.TrimSuffix(stdout.String(), "\n")
			return jsonval.ParseExact(strings.TrimSuffix(out, "\r")), nil
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%s: %w", argv[0], context.Cause(ctx))
		case runCtx.Err() != nil:
			return nil, fmt.Errorf("timed out after %s", timeout)
		default:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				err := failureLine(stdout.String(), stderr)
				if err == nil {
					err = withStderr(exit.Error(), stderr)
				}
				if o.noRetryExit != 0 && exit.ExitCode() == o.noRetryExit {
					err = NoRetry(err) // whatever the line said
				}
				return nil, err
			}
			if errors.Is(err, exec.ErrWaitDelay) {
				return nil, fmt.Errorf("%s exited but a process it started kept its output open", argv[0])
			}
		}
		return nil, err
	}
}

// A CommandOption changes how Command runs its command.
type CommandOption func(*commandOptions)

type commandOptions struct {
	noRetryExit int // 0: none
}

// NoRetryExit makes Command fail a task whose command exits with status
// code (1 to 255) not to be retried: the task goes to the dead-letter
// queue at once (NoRetry). A command's way to say its input is bad; 65,
// sysexits' EX_DATAERR, is a common choice. 0 is none.
func NoRetryExit(code int) CommandOption {
	return func(o *commandOptions) { o.noRetryExit = code }
}

// commandInput renders a payload for a command's stdin.
func commandInput(t Task) (input []byte, format string, err error) {
	v, err := t.Value()
	if err != nil {
		return nil, "", err
	}
	switch v := v.(type) {
	case string:
		return []byte(v), "text", nil
	case []byte:
		return v, "bytes", nil
	}
	b, err := jsonval.Marshal(v)
	if err != nil {
		return nil, "", err
	}
	return append(b, '\n'), "json", nil
}

// failureLine reads the stdout of a command that exited non-zero: one of
// the stdio protocol's failure lines there ("!error TEXT", "!retry
// SECONDS TEXT", "!fail TEXT"; docs/WORKERS.md) fails the task as it
// says, TEXT the error, with the end of stderr; nil for any other output.
// (A command that exits 0 has its stdout as its result, whatever it
// holds.)
func failureLine(stdout string, stderr *tailBuffer) error {
	line := strings.TrimSuffix(strings.TrimSuffix(stdout, "\n"), "\r")
	if !strings.HasPrefix(line, "!") || strings.Contains(line, "\n") {
		return nil
	}
	_, perr := parseResultLine([]byte(line))
	var ce *childError
	if !errors.As(perr, &ce) {
		return nil
	}
	text := ce.text
	if len(text) > stderrTail { // as much as the end of stderr may be
		text = strings.ToValidUTF8(text[:stderrTail], "") + "..."
	}
	err := withStderr(text, stderr)
	switch {
	case ce.retryAfter > 0:
		err = RetryAfter(ce.retryAfter, err)
	case ce.noRetry:
		err = NoRetry(err)
	}
	return err
}

// withStderr is msg and the tail of stderr, if any.
func withStderr(msg string, stderr *tailBuffer) error {
	tail := strings.TrimSpace(stderr.String())
	if tail == "" {
		return errors.New(msg)
	}
	return fmt.Errorf("%s: %s", msg, tail)
}

// limitedBuffer keeps the first max bytes written to it and notes whether
// there were more.
type limitedBuffer struct {
	bytes.Buffer
	max      int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.overflow = true
		b.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf []byte
	max int
	cut bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.cut = true
	}
	return len(p), nil
}

// String returns the tail, starting at a whole character and marked with
// "..." if the beginning was cut.
func (b *tailBuffer) String() string {
	s := b.buf
	if !b.cut {
		return string(s)
	}
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return "..." + string(s)
}
