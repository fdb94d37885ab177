package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// cell is the measurement of one system at one payload size and worker count.
type cell struct {
	System     string
	Size       int
	Workers    int
	N          int
	Throughput float64         // tasks per second, end to end
	RTT        []time.Duration // single-task round trips
	PeakRSS    int64           // the master's VmHWM, bytes
	Err        string          // why the cell has no figures
}

func (c cell) percentile(p float64) time.Duration {
	if len(c.RTT) == 0 {
		return 0
	}
	s := slices.Clone(c.RTT)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func (c cell) summary() string {
	if c.Err != "" {
		return c.Err
	}
	return fmt.Sprintf("%.0f tasks/s, p50 %s, p99 %s, peak RSS %s", c.Throughput,
		fmtDur(c.percentile(0.50)), fmtDur(c.percentile(0.99)), fmtBytes(c.PeakRSS))
}

// memCell is the resident set of a master holding N ready tasks.
type memCell struct {
	System  string
	N       int
	RSS     int64
	PeakRSS int64
	Err     string
}

func (m memCell) summary() string {
	if m.Err != "" {
		return m.Err
	}
	return fmt.Sprintf("RSS %s, peak %s", fmtBytes(m.RSS), fmtBytes(m.PeakRSS))
}

// report is one run's results and the machine they were measured on.
type report struct {
	opts              *options
	Started, Finished time.Time
	NProc             int
	CPU               string
	Kernel            string
	Redis, Python     string
	Cells             []cell
	Mem               []memCell
}

func (r *report) describeMachine(opts *options) {
	r.NProc = runtime.NumCPU()
	r.CPU = "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				r.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		r.Kernel = strings.TrimSpace(string(b))
	}
	r.Redis = firstLine(opts.RedisServer, "--version")
	r.Python = firstLine(opts.Python, "--version")
}

// firstLine runs a command and returns the first line of its output, or
// "not installed".
func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "not installed"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

var systemLabels = map[string]string{
	"qm":                    "qm, batched",
	"qm-1req":               "qm, 1 request/op",
	"qm-delayed":            "qm, delayed 1h",
	"qm-defaults":           "qm, defaults",
	"redis":                 "Redis lists, batched",
	"redis-1req":            "Redis lists, 1 request/op",
	"python":                "Python BaseManager",
	"qm-disk":               "qm, batched, --data-dir (fsync always)",
	"qm-disk-interval":      "qm, batched, --data-dir --fsync interval (100 ms)",
	"qm-js":                 "qm, batched, embedded JetStream node, defaults (fsync always)",
	"qm-js-nosync":          "qm, batched, embedded JetStream node, defaults (--fsync never)",
	"qm-js3":                "qm, batched, two gateways on three JetStream nodes, defaults (fsync always)",
	"qm-js-unpacked":        "qm, batched, embedded JetStream node, --pack 1 (fsync always)",
	"qm-js-unpacked-nosync": "qm, batched, embedded JetStream node, --pack 1 (--fsync never)",
	"qm-js3-unpacked":       "qm, batched, two gateways on three JetStream nodes, --pack 1 (fsync always)",
	"qm-js-packed":          "qm, batched, embedded JetStream node, --pack (fsync always)",
	"qm-js-packed-nosync":   "qm, batched, embedded JetStream node, --pack (--fsync never)",
	"qm-js3-packed":         "qm, batched, two gateways on three JetStream nodes, --pack (fsync always)",
	"nats":                  "NATS JetStream direct, batched (sync always)",
	"nats-nosync":           "NATS JetStream direct, batched (default sync)",
	"nats-packed":           "NATS JetStream direct, tasks packed --qm-concurrency a message (sync always)",
	"nats-packed-nosync":    "NATS JetStream direct, tasks packed --qm-concurrency a message (default sync)",
	"qm-stdio":              "qm --stdio, Python x*x",
	"qm-command":            "qm command mode, Python x*x",
}

// markdown is the results section of docs/PERFORMANCE.md.
func (r *report) markdown() string {
	var b strings.Builder
	o := r.opts
	fmt.Fprintf(&b, "## Results\n\n")
	fmt.Fprintf(&b, "Measured %s (%s) by `%s`.\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"),
		r.Finished.Sub(r.Started).Round(time.Second), o.Command)
	fmt.Fprintf(&b, "- Machine: `nproc` = %d, %s, Linux %s\n", r.NProc, r.CPU, r.Kernel)
	fmt.Fprintf(&b, "- Go %s; %s; %s\n", strings.TrimPrefix(runtime.Version(), "go"), r.Redis, r.Python)
	fmt.Fprintf(&b, "- qm, batched: the producer puts %d tasks per call and gets up to %d results per call; qworker --builtin echo --concurrency %d.\n", o.QMBatch, o.QMBatch, o.QMConcurrency)
	fmt.Fprintf(&b, "- qm, 1 request/op: one task per put, per get and per complete (qworker --concurrency 1 --prefetch 0; a worker's complete rides on its next get); the producer puts and gets concurrently.\n")
	fmt.Fprintf(&b, "- qm, defaults: what a user who starts as the README shows gets: `qmaster map` itself, fed N lines of the payload size, through qworker --builtin echo with no other flag (concurrency 1, adaptive prefetch); its round trip is the producer's, as for qm.\n")
	fmt.Fprintf(&b, "- Redis lists, batched: the batching qm's batched run has: LPUSH of %d values per command, results by RPOP count / BRPOP; workers take up to %d tasks per BLMPOP ... COUNT and push their results in one LPUSH.\n", o.QMBatch, o.QMConcurrency)
	fmt.Fprintf(&b, "- Redis lists, 1 request/op: one LPUSH per task; workers BRPOP one task and LPUSH its result.\n")
	fmt.Fprintf(&b, "- Python BaseManager: queue.Queue proxies, one put or get per call.\n")
	fmt.Fprintf(&b, "- Tasks per throughput measurement: %d for the batched runs and qm's defaults, %d for the 1 request/op runs and Python.\n", o.N, o.SlowN)
	fmt.Fprintf(&b, "- Round trip: put one task, wait for its result (qm: put and get in one call, PutThenGet); %d times after %d unmeasured. The systems of a row group run side by side and take %d turns at it, %d round trips a turn, so that a change in the machine's load falls on all of them. Peak RSS: the master's (redis-server's, the manager's) VmHWM.\n\n", o.RTT, rttWarmup, rttRounds, o.RTT/rttRounds)

	b.WriteString("| system | payload | workers | tasks | tasks/s | RTT p50 | RTT p99 | master peak RSS |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range r.Cells {
		if c.Err != "" {
			fmt.Fprintf(&b, "| %s | %s | %d | | %s | | | |\n", systemLabels[c.System], fmtBytes(int64(c.Size)), c.Workers, c.Err)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %s | %s | %s | %s |\n", systemLabels[c.System], fmtBytes(int64(c.Size)),
			c.Workers, c.N, fmtRate(c.Throughput), fmtDur(c.percentile(0.50)), fmtDur(c.percentile(0.99)), fmtBytes(c.PeakRSS))
	}
	if len(r.Mem) > 0 {
		fmt.Fprintf(&b, "\nMemory: %d 16-byte tasks held, ready (delayed by 1h for \"qm, delayed\"), no worker.\n\n", r.Mem[0].N)
		b.WriteString("| system | RSS | peak RSS |\n|---|---:|---:|\n")
		for _, m := range r.Mem {
			if m.Err != "" {
				fmt.Fprintf(&b, "| %s | %s | |\n", systemLabels[m.System], m.Err)
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", systemLabels[m.System], fmtBytes(m.RSS), fmtBytes(m.PeakRSS))
		}
	}
	b.WriteString(r.targets())
	return b.String()
}

// targets is issue 14's targets, as ratios of this run's cells: each
// system compared at the same batching.
func (r *report) targets() string {
	find := func(sys string, size int) (cell, bool) {
		for _, c := range r.Cells {
			if c.System == sys && c.Size == size && c.Workers == 4 && c.Err == "" {
				return c, true
			}
		}
		return cell{}, false
	}
	var b strings.Builder
	b.WriteString("\nTargets (issue 14), from the 4-worker rows of this run, each system at the same batching:\n\n")
	b.WriteString("| target | measured | met |\n|---|---|---|\n")
	met := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	ratio := func(target string, want float64, a, bsys string, size int) {
		x, okA := find(a, size)
		y, okB := find(bsys, size)
		if !okA || !okB {
			fmt.Fprintf(&b, "| %s | not measured | |\n", target)
			return
		}
		q := x.Throughput / y.Throughput
		fmt.Fprintf(&b, "| %s | %.2fx (%s vs %s) | %s |\n", target, q, fmtRate(x.Throughput), fmtRate(y.Throughput), met(q >= want))
	}
	ratio("qm's defaults ≥ 50x Python BaseManager, 16 B", 50, "qm-defaults", "python", 16)
	ratio("qm batched ≥ 1.0x Redis batched, 16 B", 1, "qm", "redis", 16)
	ratio("qm batched ≥ 1.5x Redis batched, 4 KiB", 1.5, "qm", "redis", 4096)
	ratio("qm 1 request/op ≥ 1.0x Redis 1 request/op, 16 B", 1, "qm-1req", "redis-1req", 16)
	if x, ok := find("qm-stdio", 16); ok {
		fmt.Fprintf(&b, "| issue 17: qm --stdio, 4 Python children ≥ 20k tasks/s | %s | %s |\n", fmtRate(x.Throughput), met(x.Throughput >= 20000))
	} else {
		fmt.Fprintf(&b, "| issue 17: qm --stdio, 4 Python children ≥ 20k tasks/s | not measured | |\n")
	}
	ratio("issue 17: qm --stdio ≥ 1000x command mode, Python", 1000, "qm-stdio", "qm-command", 16)
	ratio("issue 17: qm --stdio ≥ 5x the BaseManager worker loop", 5, "qm-stdio", "python", 16)
	if q, ok := find("qm", 16); ok {
		if rd, ok := find("redis", 16); ok {
			qp, rp := q.percentile(0.5), rd.percentile(0.5)
			fmt.Fprintf(&b, "| RTT p50 below Redis's, 16 B | %s vs %s | %s |\n", fmtDur(qp), fmtDur(rp), met(qp < rp))
		}
	}
	for _, m := range r.Mem {
		switch {
		case m.System == "qm-delayed" && m.Err == "" && m.N < 1000000:
			fmt.Fprintf(&b, "| issue 16: 1,000,000 delayed 16-byte tasks in ≤ 200 MB RSS | %s for %d (run with --mem-n 1000000) | n/a |\n", fmtBytes(m.RSS), m.N)
		case m.System == "qm-delayed" && m.Err == "":
			fmt.Fprintf(&b, "| issue 16: %d delayed 16-byte tasks in ≤ 200 MB RSS | %s | %s |\n", m.N, fmtBytes(m.RSS), met(m.RSS <= 200e6))
		case m.System != "qm" || m.Err != "":
		case m.N < 1000000:
			fmt.Fprintf(&b, "| 1,000,000 ready 16-byte tasks in ≤ 150 MB RSS | %s for %d (run with --mem-n 1000000) | n/a |\n", fmtBytes(m.RSS), m.N)
		default:
			fmt.Fprintf(&b, "| %d ready 16-byte tasks in ≤ 150 MB RSS | %s | %s |\n", m.N, fmtBytes(m.RSS), met(m.RSS <= 150e6))
		}
	}
	return b.String()
}

// Markers around the part of the output file qbench owns.
const (
	beginMarker = "<!-- qbench:begin (written by qbench --out; edits inside are lost) -->"
	endMarker   = "<!-- qbench:end -->"
)

// writeSection replaces the text between the markers of path with md, or
// appends it with markers if there are none; the rest of the file stays.
func writeSection(path, md string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	section := beginMarker + "\n" + md + endMarker + "\n"
	var out []byte
	i := bytes.Index(old, []byte(beginMarker))
	j := bytes.Index(old, []byte(endMarker))
	switch {
	case i >= 0 && j > i:
		out = append(out, old[:i]...)
		out = append(out, section...)
		rest := old[j+len(endMarker):]
		out = append(out, bytes.TrimPrefix(rest, []byte("\n"))...)
	case len(old) == 0:
		out = []byte("# Performance\n\n" + section)
	default:
		out = append(append(old, '\n'), section...)
	}
	return os.WriteFile(path, out, 0o644)
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func fmtBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

func fmtRate(r float64) string {
	return fmt.Sprintf("%.0f", r)
}
