package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// pyScripts are the classic multiprocessing BaseManager master, worker and
// producer, stdlib only.
//
//go:embed py/*.py
var pyScripts embed.FS

// errNoPython marks the Python rows as skipped rather than failed.
var errNoPython = errors.New("skipped: python3 not found")

// writePyScripts copies the scripts into dir.
func writePyScripts(dir string) error {
	entries, err := pyScripts.ReadDir("py")
	if err != nil {
		return err
	}
	for _, e := range entries {
		b, err := pyScripts.ReadFile("py/" + e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// pythonSystem is the BaseManager manager with its workers, and the
// producer script, which runs each measurement when told on its stdin.
type pythonSystem struct {
	processes // the manager is the server
	producer  *proc
	commands  io.WriteCloser
	answers   chan []byte // the producer's output lines
}

// producerTimeout bounds one command of the Python producer.
const producerTimeout = 10 * time.Minute

// startPython starts the manager, w workers and the producer, for payloads
// of size bytes.
func (b *bench) startPython(ctx context.Context, size, w int) (sys system, err error) {
	py, err := exec.LookPath(b.opts.Python)
	if err != nil {
		return nil, errNoPython
	}
	s := &pythonSystem{answers: make(chan []byte, 4)}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	env := []string{"QB_AUTHKEY=" + b.key}
	script := func(name string) string { return filepath.Join(b.tmp, name) }

	portc := make(chan int, 1)
	s.server, err = b.procs.start("python manager", []string{py, "-u", script("manager.py")}, env, func(line string) {
		if p, err := strconv.Atoi(line); err == nil {
			select {
			case portc <- p:
			default:
			}
		}
	})
	if err != nil {
		return nil, err
	}
	var port int
	select {
	case port = <-portc:
	case <-s.server.done:
		return nil, s.server.failure()
	case <-time.After(10 * time.Second):
		return nil, errors.New("python manager printed no port within 10s")
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	ready := make(chan struct{}, w)
	for i := range w {
		p, err := b.procs.start("python worker "+strconv.Itoa(i), []string{py, "-u", script("worker.py"), strconv.Itoa(port)}, env,
			func(line string) {
				if line == "ready" {
					ready <- struct{}{}
				}
			})
		if err != nil {
			return nil, err
		}
		s.workers = append(s.workers, p)
	}
	got := 0
	err = waitFor(ctx, 20*time.Second, "python workers to connect", func() bool {
		for {
			select {
			case <-ready:
				got++
			default:
				return got >= w
			}
		}
	}, append(s.workers, s.server)...)
	if err != nil {
		return nil, err
	}

	s.producer, s.commands, err = b.procs.startWithInput("python producer",
		[]string{py, "-u", script("producer.py"), strconv.Itoa(port), strconv.Itoa(size)}, env,
		func(line string) {
			select {
			case s.answers <- []byte(line):
			default: // nobody asked (a late answer after a timeout): never block the reader
			}
		})
	if err != nil {
		return nil, err
	}
	var hello struct {
		Ready bool `json:"ready"`
	}
	if err := s.answer(ctx, 20*time.Second, &hello); err != nil {
		return nil, err
	}
	return s, nil
}

// ask sends the producer a command and decodes its answer into v.
func (s *pythonSystem) ask(ctx context.Context, command string, v any) error {
	if _, err := fmt.Fprintln(s.commands, command); err != nil {
		return fmt.Errorf("python producer: %w", err)
	}
	return s.answer(ctx, producerTimeout, v)
}

// answer decodes the producer's next output line into v.
func (s *pythonSystem) answer(ctx context.Context, timeout time.Duration, v any) error {
	select {
	case line := <-s.answers:
		if err := json.Unmarshal(line, v); err != nil {
			return fmt.Errorf("python producer output %q: %w", line, err)
		}
		return nil
	case <-s.producer.done:
		return s.producer.failure()
	case <-time.After(timeout):
		return fmt.Errorf("python producer did not answer within %s", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *pythonSystem) throughput(ctx context.Context, n int) (time.Duration, error) {
	var res struct {
		Seconds float64 `json:"seconds"`
	}
	if err := s.ask(ctx, "throughput "+strconv.Itoa(n), &res); err != nil {
		return 0, err
	}
	return time.Duration(res.Seconds * float64(time.Second)), nil
}

func (s *pythonSystem) roundTrips(ctx context.Context, count int) ([]time.Duration, error) {
	var res struct {
		RTTNs []int64 `json:"rtt_ns"`
	}
	if err := s.ask(ctx, "rtt "+strconv.Itoa(count), &res); err != nil {
		return nil, err
	}
	out := make([]time.Duration, len(res.RTTNs))
	for i, ns := range res.RTTNs {
		out[i] = time.Duration(ns)
	}
	return out, nil
}

func (s *pythonSystem) close() {
	if s.commands != nil {
		s.commands.Close() // the producer ends at the end of its input
	}
	if s.producer != nil {
		s.producer.stop()
	}
	s.stop()
}
