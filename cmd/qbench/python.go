package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
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

// pythonCell measures the BaseManager scripts with w workers and payloads
// of size bytes; its producer puts and gets b.opts.SlowN tasks.
func (b *bench) pythonCell(ctx context.Context, size, w int) (cell, error) {
	n := b.opts.SlowN
	r := cell{N: n}
	py, err := exec.LookPath(b.opts.Python)
	if err != nil {
		return r, errNoPython
	}
	env := []string{"QB_AUTHKEY=" + b.key}
	script := func(name string) string { return filepath.Join(b.tmp, name) }

	portc := make(chan int, 1)
	manager, err := b.procs.start("python manager", []string{py, "-u", script("manager.py")}, env, func(line string) {
		if p, err := strconv.Atoi(line); err == nil {
			select {
			case portc <- p:
			default:
			}
		}
	})
	if err != nil {
		return r, err
	}
	defer manager.stop()
	var port int
	select {
	case port = <-portc:
	case <-manager.done:
		return r, manager.failure()
	case <-time.After(10 * time.Second):
		return r, errors.New("python manager printed no port within 10s")
	case <-ctx.Done():
		return r, ctx.Err()
	}

	ready := make(chan struct{}, w)
	var workers []*proc
	defer func() { stopAll(workers) }()
	for i := range w {
		p, err := b.procs.start("python worker "+strconv.Itoa(i), []string{py, "-u", script("worker.py"), strconv.Itoa(port)}, env,
			func(line string) {
				if line == "ready" {
					ready <- struct{}{}
				}
			})
		if err != nil {
			return r, err
		}
		workers = append(workers, p)
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
	}, append(workers, manager)...)
	if err != nil {
		return r, err
	}

	var (
		mu  sync.Mutex
		out []byte
	)
	producer, err := b.procs.start("python producer", []string{py, "-u", script("producer.py"),
		strconv.Itoa(port), strconv.Itoa(n), strconv.Itoa(size), strconv.Itoa(b.opts.RTT)}, env,
		func(line string) {
			mu.Lock()
			out = append(out, line...)
			mu.Unlock()
		})
	if err != nil {
		return r, err
	}
	select {
	case <-producer.done:
	case <-ctx.Done():
		producer.stop()
		return r, ctx.Err()
	}
	if producer.err != nil {
		return r, producer.failure()
	}
	var res struct {
		Seconds float64 `json:"seconds"`
		RTTNs   []int64 `json:"rtt_ns"`
	}
	mu.Lock()
	defer mu.Unlock()
	if err := json.Unmarshal(out, &res); err != nil {
		return r, fmt.Errorf("python producer output %q: %w", out, err)
	}
	r.Throughput = float64(n) / res.Seconds
	for _, ns := range res.RTTNs {
		r.RTT = append(r.RTT, time.Duration(ns))
	}
	r.PeakRSS, _, err = memStatus(manager.pid())
	return r, err
}
