package sim

import "time"

// host is a machine: cores shared by the processes on it. A process that
// has work but no free core waits in line; when a core frees, the first in
// line runs one operation, then goes to the back of the line if it has
// more (round-robin, as the kernel shares cores among processes that each
// run short bursts).
type host struct {
	c    *clock
	free int
	// quantum is the longest an operation runs before the core goes to
	// the next in line; a longer one (a put of a thousand tasks) goes on
	// when its process's turn comes again, as a process that does its work
	// message by message gets only its share of a busy machine.
	quantum time.Duration
	line    []*process
	inUse   time.Duration // CPU time given to operations
}

func newHost(c *clock, cores int, quantum time.Duration) *host {
	return &host{c: c, free: cores, quantum: quantum}
}

// process is one OS process (a gateway, a node, a client) on a host, with
// at most threads operations running at once.
type process struct {
	h       *host
	threads int
	running int
	ops     []op
	inLine  bool
	dead    bool
	whole   bool          // its operations are never cut (see host.quantum)
	busy    time.Duration // CPU time used
}

// op is an operation: it takes cost of CPU, then done runs.
type op struct {
	cost time.Duration
	done func()
}

func (h *host) newProcess(threads int) *process {
	return &process{h: h, threads: max(1, threads)}
}

// do queues an operation on p.
func (p *process) do(cost time.Duration, done func()) {
	if p.dead {
		return
	}
	p.ops = append(p.ops, op{cost, done})
	p.h.enqueue(p)
	p.h.dispatch()
}

// kill drops p's queued operations; those running end without effect.
func (p *process) kill() {
	p.dead = true
	p.ops = nil
}

// enqueue puts p in line for a core if it can use one.
func (h *host) enqueue(p *process) {
	if p.inLine || len(p.ops) == 0 || p.running >= p.threads || p.dead {
		return
	}
	p.inLine = true
	h.line = append(h.line, p)
}

// dispatch starts operations while cores are free and someone waits.
func (h *host) dispatch() {
	for h.free > 0 && len(h.line) > 0 {
		p := h.line[0]
		h.line = h.line[1:]
		p.inLine = false
		if len(p.ops) == 0 || p.running >= p.threads || p.dead {
			continue
		}
		o := p.ops[0]
		p.ops = p.ops[1:]
		run := o.cost
		if h.quantum > 0 && run > h.quantum && !p.whole {
			run = h.quantum
		}
		h.free--
		p.running++
		p.busy += run
		h.inUse += run
		h.c.after(run, func() {
			h.free++
			p.running--
			switch {
			case p.dead:
			case run < o.cost:
				// The rest goes on at the process's next turn: the kernel
				// preempts the thread, not the goroutine within it (Go
				// preempts a goroutine only after 10ms).
				p.ops = append([]op{{o.cost - run, o.done}}, p.ops...)
			default:
				o.done()
			}
			h.enqueue(p)
			h.dispatch()
		})
		// A process with more threads than running ops queues again.
		h.enqueue(p)
	}
}
