package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/internal/jsonval"
)

const (
	// exitGrace is how long a child whose stdout ended may take to exit
	// before it is killed, so that its error says how it exited.
	exitGrace = time.Second
	// stderrGrace is how long a stopped child's stderr may stay open,
	// held by a process that left its group, before it is closed on it.
	stderrGrace = time.Second
	// childReadBuffer is the read buffer of a child's stdout.
	childReadBuffer = 64 << 10
)

// errLineTooLong is a result line longer than StdioConfig.MaxLine.
var errLineTooLong = errors.New("result line too long")

// child is one slot of a Stdio: a process, restarted as needed. Its
// fields belong to its owner goroutine (own), and to NewStdio before.
type child struct {
	cfg *StdioConfig
	id  int

	proc     *process // nil while stopped
	failures int      // stops in a row with no answer between, for the backoff
	health   *stdioHealth
	// culprit is the task whose exchange is failing, told to health
	// with the failure (0: none, as for a child that failed to start).
	culprit uint64
	// service is a moving average of how long the child takes per task,
	// from when a task is first in line to its answer; 0 until the first
	// answer of a child that asked for tasks ahead (batchMax).
	service time.Duration
	// suspects counts the tasks at the head of the line that run one at
	// a time: the child failed holding them all, and which it failed on
	// is not known (owner.fail).
	suspects int
	// holds is batchMax as others read it (Stdio.Capacity).
	holds     atomic.Int32
	stoppedAt time.Time
	in        []byte // the task lines being written
}

// process is one run of a child's command.
type process struct {
	cmd           *exec.Cmd
	stdin, stdout *os.File
	stderr        *os.File
	out           *bufio.Reader
	tail          *lastStderr
	exited        chan struct{} // closed once waitErr is set
	waitErr       error
	stderrDone    chan struct{}
	lines         chan childLine // from readLines, closed when it ends
	pipelined     bool           // the child asked for tasks ahead
	exitAwaited   bool           // awaitExit has waited once
	// written counts the bytes of task lines written to stdin: with what
	// stdin holds unread, it tells whether the child read anything of
	// them (owner.unreadByBrokenCommand).
	written int64
}

// childLine is what readLines makes of one line of a child's stdout, or
// the error that ended it.
type childLine struct {
	v    any
	err  error // a read error ends the lines
	more bool  // more output was there already
}

// readLines reads the child's stdout until it ends, parsing each line.
func (p *process) readLines(max int) {
	defer close(p.lines)
	lr := &lineReader{r: p.out, max: max}
	for {
		line, err := lr.readLine()
		if err != nil && !errors.Is(err, errLineTooLong) {
			p.lines <- childLine{err: err}
			return
		}
		l := childLine{err: err}
		if err == nil {
			l.v, l.err = parseResultLine(line)
		}
		l.more = p.out.Buffered() > 0
		p.lines <- l
	}
}

// lastStderr keeps the end of what a child wrote on stderr, for the error
// of an attempt it fails by exiting. It is not cleared at each answer:
// stdout and stderr are separate pipes, so a line the child wrote on
// stderr after an answer can be read before that answer, and clearing
// there lost the reason of a child that answered, then wrote why it
// stops and exited.
//
// What came before the task the child is on (mark) is told apart in the
// error, so that an earlier task's traceback is not read as this one's.
type lastStderr struct {
	mu  sync.Mutex
	buf tailBuffer
	// added counts the bytes ever added; marked is added as it was when
	// the task the child is on became its turn.
	added, marked int
}

func (s *lastStderr) add(p []byte) {
	s.mu.Lock()
	_, _ = s.buf.Write(p)
	s.added += len(p)
	s.mu.Unlock()
}

// mark notes that the child's next task begins its turn: what it writes
// from now on is that task's.
func (s *lastStderr) mark() {
	s.mu.Lock()
	s.marked = s.added
	s.mu.Unlock()
}

// take returns the tail and empties it; lines written before the mark
// come first, and a line says where the task's own begin.
func (s *lastStderr) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := s.buf.String()
	since := s.added - s.marked
	s.buf.buf, s.buf.cut = s.buf.buf[:0], false
	s.marked = s.added
	if since >= len(all) || since >= s.buf.max { // all of the tail is the task's own
		return strings.TrimSpace(all)
	}
	before := strings.TrimSpace(all[:len(all)-since])
	mine := strings.TrimSpace(all[len(all)-since:])
	switch {
	case before == "":
		return mine
	case mine == "":
		return before + "\n--- (written before this task's turn; nothing since) ---"
	}
	return before + "\n--- (the lines above were written before this task's turn) ---\n" + mine
}

// start starts the child's command.
func (c *child) start() error {
	argv := c.cfg.Command
	cmd := exec.Command(argv[0], argv[1:]...)
	inNewGroup(cmd)
	cmd.Env = append(os.Environ(), "QM_STDIO=1", "QM_CHILD="+strconv.Itoa(c.id))
	if c.cfg.Envelope {
		cmd.Env = append(cmd.Env, "QM_STDIO_ENVELOPE=1")
	}
	if _, set := os.LookupEnv("PYTHONUNBUFFERED"); !set {
		// A plain print() loop then answers at once instead of when
		// Python's 8 KiB buffer fills.
		cmd.Env = append(cmd.Env, "PYTHONUNBUFFERED=1")
	}
	var files []*os.File // every end, closed on failure
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	inR, inW, err1 := pipe()
	outR, outW, err2 := pipe()
	errR, errW, err3 := pipe()
	err := errors.Join(err1, err2, err3)
	var exited <-chan error
	if err == nil {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		exited, err = startOwned(cmd)
	}
	if err != nil {
		for _, f := range files {
			_ = f.Close()
		}
		return fmt.Errorf("start child %d: %w", c.id, err)
	}
	// The child has its own copies of its ends.
	_, _, _ = inR.Close(), outW.Close(), errW.Close()
	p := &process{
		cmd:        cmd,
		stdin:      inW,
		stdout:     outR,
		stderr:     errR,
		out:        bufio.NewReaderSize(outR, childReadBuffer),
		tail:       &lastStderr{buf: tailBuffer{max: stderrTail}},
		exited:     make(chan struct{}),
		stderrDone: make(chan struct{}),
		lines:      make(chan childLine, 64),
	}
	go func() {
		p.waitErr = <-exited
		close(p.exited)
	}()
	go p.logStderr(c.cfg.Logger.With("child", c.id, "pid", cmd.Process.Pid))
	go p.readLines(c.cfg.MaxLine)
	c.proc = p
	c.cfg.Logger.Debug("child started", "child", c.id, "pid", cmd.Process.Pid)
	return nil
}

// logStderr logs the child's stderr, a line a record, and keeps its end.
func (p *process) logStderr(log *slog.Logger) {
	defer close(p.stderrDone)
	r := bufio.NewReaderSize(p.stderr, 4<<10)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 {
			p.tail.add(line)
			log.Info("child stderr", "line", string(bytes.TrimRight(line, "\r\n")))
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// lineReader cuts a child's stdout into lines of at most max bytes.
type lineReader struct {
	r    *bufio.Reader
	max  int
	long []byte // a line longer than the read buffer
}

// readLine reads a line, without its '\n', of at most max bytes; a
// longer one is skipped and reported as errLineTooLong.
func (lr *lineReader) readLine() ([]byte, error) {
	r := lr.r
	line, err := r.ReadSlice('\n')
	if err == nil {
		if len(line)-1 > lr.max {
			return nil, errLineTooLong
		}
		return line[:len(line)-1], nil
	}
	lr.long = lr.long[:0]
	for errors.Is(err, bufio.ErrBufferFull) {
		if len(lr.long)+len(line) <= lr.max+1 {
			lr.long = append(lr.long, line...)
		} else {
			lr.long = lr.long[:0]
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				return nil, err
			}
			return nil, errLineTooLong
		}
		line, err = r.ReadSlice('\n')
	}
	if err != nil {
		return nil, err
	}
	lr.long = append(lr.long, line...)
	if len(lr.long)-1 > lr.max {
		return nil, errLineTooLong
	}
	if cap(lr.long) > 1<<20 { // keep no huge buffer for the lines to come
		line, lr.long = lr.long, nil
		return line[:len(line)-1], nil
	}
	return lr.long[:len(lr.long)-1], nil
}

// broken stops a child whose exchange failed with err and returns the
// attempt's error.
func (c *child) broken(err error) error {
	p := c.proc
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Slow is not broken (a first task that loads a model): not told
		// to the Stdio's health.
		c.stop(true)
		return childRestartError(c.id, fmt.Sprintf("timed out after %s; restarted", c.cfg.TaskTimeout), p.tail.take())
	case errors.Is(err, errProtocol):
		c.stop(true)
		c.cfg.Logger.Warn("child broke the protocol; restarting it", "child", c.id, "err", err)
		return c.failedWith(fmt.Errorf("child %d %w; restarted", c.id, err))
	}
	// The child closed its stdout or its stdin: it exited, or is about to.
	p.awaitExit()
	c.stop(true)
	what := "closed its stdout"
	select {
	case <-p.exited:
		what = "exited"
		if p.waitErr != nil {
			what = "exited (" + p.waitErr.Error() + ")"
		}
	default:
	}
	c.cfg.Logger.Warn("child stopped; restarting it", "child", c.id, "how", what, "err", err)
	return c.failedWith(childRestartError(c.id, what, p.tail.take()))
}

// awaitExit waits, once, up to exitGrace for the child to exit.
func (p *process) awaitExit() {
	if p.exitAwaited {
		return
	}
	p.exitAwaited = true
	select {
	case <-p.exited:
	case <-time.After(exitGrace):
	}
}

// failedWith tells the Stdio's health that the child failed with err, and
// returns err.
func (c *child) failedWith(err error) error {
	c.health.fail(c.id, c.culprit, err)
	return err
}

// stop kills the child's process group and waits for it. failed counts it
// towards the restart backoff (and the caller tells the Stdio's health).
func (c *child) stop(failed bool) {
	p := c.proc
	if p == nil {
		return
	}
	c.proc = nil
	c.holds.Store(1)
	if failed {
		c.failures++
	}
	c.stoppedAt = time.Now()
	_ = killGroup(p.cmd) // also whatever it started, even if it exited
	<-p.exited
	p.closeFiles()
	for range p.lines { // until readLines ends
	}
}

// closeFiles closes the parent's ends, once the stderr reader is done or
// has waited long enough for a process that kept stderr open.
func (p *process) closeFiles() {
	select {
	case <-p.stderrDone:
	case <-time.After(stderrGrace):
	}
	_ = p.stderr.Close() // ends logStderr if it still waits
	<-p.stderrDone
	_ = p.stdin.Close()
	_ = p.stdout.Close() // ends readLines if it still waits
}

// restart starts a stopped child, after the backoff its failures call
// for.
func (c *child) restart(quit <-chan struct{}) error {
	if c.failures > 0 {
		delay := min(c.cfg.RestartMin<<min(c.failures-1, 30), c.cfg.RestartMax)
		if wait := time.Until(c.stoppedAt.Add(delay)); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-timer.C:
			case <-quit:
				timer.Stop()
				return errStdioClosed
			}
		}
	}
	if err := c.start(); err != nil {
		c.failures++
		c.health.fail(c.id, 0, err)
		c.stoppedAt = time.Now()
		return err
	}
	return nil
}

// closeInput closes the child's stdin: end of input, the sign to exit.
func (c *child) closeInput() {
	if c.proc != nil {
		_ = c.proc.stdin.Close()
	}
}

// stopBy waits until deadline for the child to exit, then kills it.
func (c *child) stopBy(deadline time.Time) error {
	p := c.proc
	if p == nil {
		return nil
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	killed := false
	select {
	case <-p.exited:
	case <-timer.C:
		killed = true
	}
	c.stop(false)
	if killed {
		return fmt.Errorf("child %d did not exit within %s of its stdin closing; killed", c.id, c.cfg.StopTimeout)
	}
	return nil
}

// stdioInput appends a task's line for a child to buf: its payload as one
// line of JSON, or, with envelope, the object that carries it with the
// task's ID, attempt, queue and last error.
func stdioInput(t Task, buf []byte, envelope bool) ([]byte, error) {
	v, err := t.Value()
	if err != nil {
		return nil, err
	}
	if envelope {
		buf = append(buf, `{"id":`...)
		buf = strconv.AppendUint(buf, t.ID, 10)
		buf = append(buf, `,"attempt":`...)
		buf = strconv.AppendInt(buf, int64(t.Attempt), 10)
		for _, f := range [...]struct{ name, value string }{{"queue", t.Queue}, {"last_error", t.LastError}} {
			if f.value == "" {
				continue
			}
			s, err := jsonval.Marshal(strings.ToValidUTF8(f.value, "\uFFFD"))
			if err != nil {
				return nil, err
			}
			buf = append(append(append(append(buf, `,"`...), f.name...), `":`...), s...)
		}
		buf = append(buf, `,"payload":`...)
	}
	if b, ok := appendSimpleJSON(buf, v); ok {
		buf = b
	} else {
		b, err := jsonval.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("payload cannot be sent as JSON: %w", err)
		}
		buf = append(buf, b...)
	}
	if envelope {
		buf = append(buf, '}')
	}
	return append(buf, '\n'), nil
}

// appendSimpleJSON appends the JSON of an integer, or of a string that
// needs no escape, as jsonval.Marshal would write it; the commonest
// payloads then cost no encoder.
func appendSimpleJSON(buf []byte, v any) ([]byte, bool) {
	switch v := v.(type) {
	case int64:
		return strconv.AppendInt(buf, v, 10), true
	case uint64:
		return strconv.AppendUint(buf, v, 10), true
	case string:
		if len(v) > 256 {
			return buf, false
		}
		for i := range len(v) {
			if c := v[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
				return buf, false
			}
		}
		buf = append(buf, '"')
		buf = append(buf, v...)
		return append(buf, '"'), true
	}
	return buf, false
}
