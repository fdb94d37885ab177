package sim

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"time"
)

// task is one task of a queue, from its put to its result.
type task struct {
	id      uint64
	q       int
	put     time.Duration // when the producer put it
	ended   time.Duration // when its last handler ended
	attempt int
	// The delivery that counts: through which gateway, and when.
	gw      *gateway
	leased  time.Duration
	current uint64 // delivery number; a completion of an older one is refused
}

// stream is a queue's JetStream stream (and its results stream): its
// ready tasks in order, the pulls waiting for one, and where it is kept.
type stream struct {
	ready   []*task
	pulls   []pull
	results []*task   // the tasks whose results are not yet taken
	waiting *producer // the producer's get, if it waits
	leader  *node
	follow  []*node
}

// pull is a worker's get waiting at a stream, through a gateway.
type pull struct {
	gw      *gateway
	deliver func(*task)
}

type gateway struct {
	i      int
	p      *process
	alive  bool
	leases map[*task]struct{}
}

type node struct{ p *process }

type worker struct {
	q      int
	gw     *gateway
	client *process
	epoch  int // bumped when its connection is lost
	// task is the last task it started, and taskDone when its handler
	// ends: the task it completes through another gateway if its own dies.
	task     *task
	taskDone time.Duration
}

type producer struct {
	q      int
	gw     *gateway
	client *process
	getAt  time.Duration // when its get of results began
}

// model is one run's state.
type model struct {
	cfg      Config
	c        *clock
	rng      *rand.Rand
	gateways []*gateway
	nodes    []*node
	streams  []*stream
	workers  []*worker
	clients  []*process
	res      *Result
	killedAt time.Duration
	ids      uint64
	measure  [2]time.Duration // the measured interval
}

func newModel(cfg Config) *model {
	if cfg.Replicas > 1 {
		cfg.Costs.Node = time.Duration(float64(cfg.Costs.Node) * cfg.Costs.Replicated)
	}
	m := &model{cfg: cfg, c: &clock{}, rng: rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15)), res: &Result{}}
	m.measure = [2]time.Duration{cfg.Warmup, cfg.Warmup + cfg.Duration}
	var shared *host
	hostOf := func(cores int) *host {
		if cfg.SharedCores > 0 {
			if shared == nil {
				shared = newHost(m.c, cfg.SharedCores, cfg.Quantum)
			}
			return shared
		}
		return newHost(m.c, cores, cfg.Quantum)
	}
	threads := func(cores int) int {
		if cfg.SharedCores > 0 {
			cores = cfg.SharedCores
		}
		return min(cfg.Threads, cores)
	}
	for i := range cfg.Gateways {
		g := &gateway{i: i, p: hostOf(cfg.GatewayCores).newProcess(threads(cfg.GatewayCores)), alive: true, leases: map[*task]struct{}{}}
		m.gateways = append(m.gateways, g)
		m.background(g.p, cfg.Costs.GatewayFixed)
	}
	for range cfg.Nodes {
		n := &node{p: hostOf(cfg.NodeCores).newProcess(threads(cfg.NodeCores))}
		m.nodes = append(m.nodes, n)
		m.background(n.p, cfg.Costs.NodeFixed)
	}
	for range cfg.ClientProcs {
		p := hostOf(cfg.ClientCores).newProcess(threads(cfg.ClientCores))
		m.clients = append(m.clients, p)
		m.background(p, cfg.Costs.ClientFixed)
	}
	if shared != nil && (cfg.External > 0 || len(cfg.ExternalTrace) > 0) {
		m.external(shared)
	}
	for q := range cfg.Queues {
		s := &stream{leader: m.nodes[q%cfg.Nodes]}
		for r := 1; r < cfg.Replicas; r++ {
			s.follow = append(s.follow, m.nodes[(q+r)%cfg.Nodes])
		}
		m.streams = append(m.streams, s)
	}
	for i := range cfg.Workers {
		w := &worker{q: i % cfg.Queues, client: m.clients[i%cfg.ClientProcs]}
		w.gw = m.dial()
		m.workers = append(m.workers, w)
		m.c.after(time.Duration(m.rng.Int64N(int64(10*time.Millisecond))), func() { m.call(w, nil, nil) })
	}
	for q := range cfg.Queues {
		// Producers on the first gateways: the one killed is the last.
		pr := &producer{q: q, gw: m.gateways[q%max(1, cfg.Gateways-1)], client: m.clients[0]}
		n := cfg.Window / cfg.Queues
		if q < cfg.Window%cfg.Queues {
			n++
		}
		m.c.after(0, func() { m.put(pr, n) })
	}
	if cfg.KillAt > 0 {
		m.c.after(cfg.Warmup+cfg.KillAt, func() { m.kill(m.gateways[len(m.gateways)-1]) })
	}
	return m
}

// background charges a process its fixed load, in 1 ms slices every
// 10 ms.
func (m *model) background(p *process, cores float64) {
	m.load(p, cores, time.Millisecond, 10*time.Millisecond)
}

// load charges p cores of CPU in slices of slice, every period.
func (m *model) load(p *process, cores float64, slice, period time.Duration) {
	if cores <= 0 {
		return
	}
	each := time.Duration(cores * float64(period))
	var tick func()
	tick = func() {
		for left := each; left > 0; left -= slice {
			p.do(min(left, slice), func() {})
		}
		m.c.after(period, tick)
	}
	m.c.after(time.Duration(m.rng.Int64N(int64(period))), tick)
}

// external runs other programs' load on the shared host h: as many
// single-threaded programs as the load needs, each a time slice at a time.
func (m *model) external(h *host) {
	cfg := m.cfg
	level := func(time.Duration) float64 { return cfg.External }
	peak := cfg.External
	if tr := cfg.ExternalTrace; len(tr) > 0 {
		var sum float64
		for _, v := range tr {
			sum += v
		}
		mean := sum / float64(len(tr))
		peak = max(mean, slices.Max(tr))
		level = func(now time.Duration) float64 {
			if now < cfg.Warmup {
				return mean
			}
			return tr[min(len(tr)-1, int((now-cfg.Warmup)/cfg.ExternalPeriod))]
		}
	}
	period := 10 * cfg.ExternalSlice
	for k := 0; float64(k) < peak; k++ {
		p := h.newProcess(1)
		p.whole = true
		var tick func()
		tick = func() {
			each := time.Duration(min(1, max(0, level(m.c.now)-float64(k))) * float64(period))
			for left := each; left > 0; left -= cfg.ExternalSlice {
				p.do(min(left, cfg.ExternalSlice), func() {})
			}
			m.c.after(period, tick)
		}
		m.c.after(time.Duration(m.rng.Int64N(int64(period))), tick)
	}
}

// dial picks a gateway as wire.Dial does: a random one of the list, or the
// next alive after it.
func (m *model) dial() *gateway {
	start := m.rng.IntN(len(m.gateways))
	for k := range m.gateways {
		if g := m.gateways[(start+k)%len(m.gateways)]; g.alive {
			return g
		}
	}
	return nil
}

// send delivers fn after the network latency.
func (m *model) send(fn func()) { m.c.after(m.cfg.Latency, fn) }

func (m *model) frac(d time.Duration, f float64) time.Duration { return time.Duration(float64(d) * f) }

// replicate runs a store or ack's cost on the followers and calls done
// once a quorum (the leader and half the followers, rounded down) has it.
func (m *model) replicate(s *stream, cost time.Duration, done func()) {
	need := (len(s.follow) + 1) / 2 // a majority of R counts the leader: R=3 needs 1 follower
	if need == 0 {
		done()
	}
	got := 0
	for _, f := range s.follow {
		m.send(func() {
			f.p.do(cost, func() {
				got++
				if got == need {
					m.send(done)
				}
			})
		})
	}
}

// call is a worker's CompleteThenGet: complete done (if not nil), then
// get the next task, through its gateway. from is the gateway that handed
// done out: another one when its worker moved (see kill), which costs
// the leader a read of the deliveries' record besides.
func (m *model) call(w *worker, done *task, from *gateway) {
	g, epoch, s, k := w.gw, w.epoch, m.streams[w.q], m.cfg.Costs
	if done != nil {
		done.ended = m.c.now
	}
	gwHalf := m.frac(k.Gateway, k.GatewayWorkerShare/2)
	m.send(func() {
		g.p.do(gwHalf, func() {
			m.send(func() {
				get := func() {
					s.leader.p.do(m.frac(k.Node, k.NodeWorkerShare/3), func() {
						m.pull(s, pull{gw: g, deliver: func(t *task) {
							m.send(func() {
								g.p.do(gwHalf, func() {
									m.send(func() {
										w.client.do(k.Client/2, func() { m.start(w, epoch, t) })
									})
								})
							})
						}})
					})
				}
				if done == nil {
					get()
					return
				}
				// Store the result and ack the task (the gateway waits for
				// both to be confirmed), then the get.
				store := func() {
					s.leader.p.do(m.frac(k.Node, k.NodeWorkerShare*2/3), func() {
						m.replicate(s, m.frac(k.Node, k.NodeWorkerShare*2/3), func() {
							m.complete(from, s, done)
							m.send(func() { m.send(get) })
						})
					})
				}
				if from == g {
					store()
					return
				}
				s.leader.p.do(m.frac(k.Node, k.NodeWorkerShare/3), func() { m.send(func() { m.send(store) }) })
			})
		})
	})
}

// complete applies a completion that reached the stream's leader.
func (m *model) complete(g *gateway, s *stream, t *task) {
	if t.gw != g {
		return // superseded: the gateway refuses it
	}
	if _, ok := g.leases[t]; !ok {
		return
	}
	if !g.alive {
		m.res.Moved++
	}
	delete(g.leases, t)
	t.gw = nil
	s.results = append(s.results, t)
	if pr := s.waiting; pr != nil {
		s.waiting = nil
		m.takeResults(pr)
	}
}

// pull hands the first ready task to p, or waits for one.
func (m *model) pull(s *stream, p pull) {
	if !p.gw.alive {
		return
	}
	if len(s.ready) == 0 {
		s.pulls = append(s.pulls, p)
		return
	}
	t := s.ready[0]
	s.ready = s.ready[1:]
	m.lease(t, p)
}

func (m *model) lease(t *task, p pull) {
	t.gw, t.leased = p.gw, m.c.now
	t.current++
	p.gw.leases[t] = struct{}{}
	p.deliver(t)
}

// ready adds tasks to a stream, at the front for redeliveries, and serves
// the waiting pulls.
func (m *model) ready(s *stream, ts []*task, front bool) {
	if front {
		s.ready = append(slices.Clone(ts), s.ready...)
	} else {
		s.ready = append(s.ready, ts...)
	}
	for len(s.pulls) > 0 && len(s.ready) > 0 {
		p := s.pulls[0]
		s.pulls = s.pulls[1:]
		if !p.gw.alive {
			continue
		}
		t := s.ready[0]
		s.ready = s.ready[1:]
		m.lease(t, p)
	}
}

// start runs the handler of t on w, unless w lost its connection since it
// asked for t.
func (m *model) start(w *worker, epoch int, t *task) {
	if w.epoch != epoch {
		return
	}
	now := m.c.now
	if m.measuring(now) {
		m.res.waits = append(m.res.waits, now-t.put)
	}
	if t.attempt > 1 && m.killedAt > 0 {
		m.res.Redelivered = append(m.res.Redelivered, now-m.killedAt)
	}
	w.task, w.taskDone = t, now+m.cfg.Compute
	m.c.after(m.cfg.Compute, func() {
		if w.epoch == epoch {
			m.call(w, t, w.gw)
		}
	})
}

func (m *model) measuring(t time.Duration) bool { return t >= m.measure[0] && t < m.measure[1] }

// put is the producer putting n new tasks, then getting results.
func (m *model) put(pr *producer, n int) {
	s, k, now := m.streams[pr.q], m.cfg.Costs, m.c.now
	ts := make([]*task, n)
	for i := range ts {
		m.ids++
		ts[i] = &task{id: m.ids, q: pr.q, put: now, attempt: 1}
	}
	gwShare := m.frac(k.Gateway, (1-k.GatewayWorkerShare)/2)
	m.send(func() {
		pr.gw.p.do(gwShare*time.Duration(n), func() {
			m.send(func() {
				s.leader.p.do(m.frac(k.Node, (1-k.NodeWorkerShare)/3)*time.Duration(n), func() {
					m.replicate(s, m.frac(k.Node, (1-k.NodeWorkerShare)/3)*time.Duration(n), func() {
						m.ready(s, ts, false)
						m.send(func() {
							m.send(func() {
								if m.measuring(now) {
									m.res.puts = append(m.res.puts, m.c.now-now)
									m.res.batched += n
								}
								m.getResults(pr)
							})
						})
					})
				})
			})
		})
	})
}

// getResults is the producer's get of results: it waits at the stream for
// one, then takes every one there is, up to ResultBatch.
func (m *model) getResults(pr *producer) {
	s := m.streams[pr.q]
	pr.getAt = m.c.now
	m.send(func() {
		m.send(func() {
			if len(s.results) == 0 {
				s.waiting = pr
				return
			}
			m.takeResults(pr)
		})
	})
}

func (m *model) takeResults(pr *producer) {
	s, k := m.streams[pr.q], m.cfg.Costs
	n := min(len(s.results), m.cfg.ResultBatch)
	done := slices.Clone(s.results[:n])
	s.results = s.results[n:]
	gwShare := m.frac(k.Gateway, (1-k.GatewayWorkerShare)/2)
	s.leader.p.do(m.frac(k.Node, (1-k.NodeWorkerShare)*2/3)*time.Duration(n), func() {
		m.send(func() {
			pr.gw.p.do(gwShare*time.Duration(n), func() {
				m.send(func() {
					if m.measuring(m.c.now) {
						m.res.gets = append(m.res.gets, m.c.now-pr.getAt)
					}
					pr.client.do(k.Client/2*time.Duration(n), func() {
						now := m.c.now
						if m.measuring(now) {
							for _, t := range done {
								m.res.rtts = append(m.res.rtts, now-t.put)
								m.res.backs = append(m.res.backs, now-t.ended)
							}
							sec := int((now - m.measure[0]) / time.Second)
							for len(m.res.PerSecond) <= sec {
								m.res.PerSecond = append(m.res.PerSecond, 0)
							}
							m.res.PerSecond[sec] += n
						}
						m.put(pr, n)
					})
				})
			})
		})
	})
}

// kill kills gateway g: its workers reconnect elsewhere after a delay,
// its leases run out AckWait after their last renewal.
func (m *model) kill(g *gateway) {
	now := m.c.now
	m.killedAt = now
	g.alive = false
	g.p.kill()
	for _, s := range m.streams {
		s.pulls = slices.DeleteFunc(s.pulls, func(p pull) bool { return p.gw == g })
	}
	for _, w := range m.workers {
		if w.gw != g {
			continue
		}
		w.epoch++
		w.gw = nil
		// The task it runs, or whose completion died with the gateway,
		// goes with it unless it is done.
		moved := w.task
		if m.cfg.NoHandover || moved == nil || moved.gw != g {
			moved = nil
		}
		delay := m.cfg.ReconnectMin + time.Duration(m.rng.Int64N(int64(max(1, m.cfg.ReconnectMin))))
		m.c.after(m.cfg.Latency+delay, func() {
			w.gw = m.dial()
			if moved == nil {
				m.call(w, nil, nil)
				return
			}
			epoch := w.epoch
			m.c.after(max(0, w.taskDone-m.c.now), func() {
				if w.epoch == epoch {
					m.call(w, moved, g)
				}
			})
		})
	}
	renew := m.cfg.AckWait / 3
	leased := make([]*task, 0, len(g.leases))
	for t := range g.leases {
		leased = append(leased, t)
	}
	// Map order is random: sort for a deterministic run.
	slices.SortFunc(leased, func(a, b *task) int { return cmp.Compare(a.id, b.id) })
	m.res.Orphaned = len(leased)
	for _, t := range leased {
		last := t.leased
		if renew > 0 {
			last += (now - t.leased) / renew * renew
		}
		cur := t.current
		m.c.after(last+m.cfg.AckWait-now, func() {
			if t.gw != g || t.current != cur {
				return
			}
			delete(g.leases, t)
			t.gw = nil
			t.attempt++
			m.ready(m.streams[t.q], []*task{t}, true)
		})
	}
}
