package sim

import (
	"cmp"
	"math/bits"
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
// ready messages in order (each a pack of one task or more), the pulls
// waiting for one, and where it is kept.
type stream struct {
	ready   [][]*task
	pulls   []pull
	results []*task   // the tasks whose results are not yet taken
	waiting *producer // the producer's get, if it waits
	leader  *node
	follow  []*node
}

// pull is a gateway's pull request waiting at a stream, for its gets.
type pull struct {
	gw      *gateway
	deliver func(pack []*task)
}

type gateway struct {
	i      int
	p      *process
	alive  bool
	leases map[*task]struct{}
	// By queue: the tasks of packs it fetched that no get has taken yet,
	// its workers' gets waiting for a task, the pull requests it has at
	// the stream for them, and how many tasks its messages carried lately
	// (how many gets one pull request stands for).
	held    [][]heldTask
	moving  [][]heldTask // held tasks taken out to be stored again, until the gateway sends them
	gets    [][]func(*task)
	pulling []int
	perMsg  []float64
	// By queue: the tasks its gets took since its last look, their rate,
	// and the pack size it said last and when (Config.PackSpan).
	handed []int
	rate   []float64
	said   []int
	saidAt []time.Duration
}

// heldTask is a task a gateway holds, since when.
type heldTask struct {
	t     *task
	since time.Duration
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
		g := &gateway{i: i, p: hostOf(cfg.GatewayCores).newProcess(threads(cfg.GatewayCores)), alive: true, leases: map[*task]struct{}{},
			held: make([][]heldTask, cfg.Queues), moving: make([][]heldTask, cfg.Queues), gets: make([][]func(*task), cfg.Queues), pulling: make([]int, cfg.Queues), perMsg: make([]float64, cfg.Queues),
			handed: make([]int, cfg.Queues), rate: make([]float64, cfg.Queues), said: make([]int, cfg.Queues), saidAt: make([]time.Duration, cfg.Queues)}
		for q := range g.perMsg {
			g.perMsg[q] = float64(cfg.Pack)
		}
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
	if cfg.Pack > 1 {
		m.c.after(cfg.HoldFor/2, m.moveOverdue)
	}
	if cfg.Pack > 1 && cfg.PackSpan > 0 {
		m.c.after(sizeEvery, m.sayPackSizes)
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
	gwHalf := m.frac(k.Gateway, k.GatewayWorkerShare/2)
	// get runs at the gateway: it hands out a task it holds, or waits for
	// one from the stream.
	get := func() {
		m.gatewayGet(g, w.q, func(t *task) {
			g.p.do(gwHalf, func() {
				m.send(func() {
					w.client.do(k.Client/2, func() { m.start(w, epoch, t) })
				})
			})
		})
	}
	m.send(func() {
		g.p.do(gwHalf, func() {
			if done == nil {
				get()
				return
			}
			m.send(func() {
				// Store the result and ack the task (the gateway waits for
				// both to be confirmed), then the get.
				store := func() {
					s.leader.p.do(m.frac(k.Node, k.NodeWorkerShare*2/3), func() {
						m.replicate(s, m.frac(k.Node, k.NodeWorkerShare*2/3), func() {
							m.complete(from, s, done)
							m.send(get)
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

// gatewayGet is a worker's get reaching gateway g: hand gets a task
// the gateway holds, or the first of the next pack it fetches for its
// waiting gets.
func (m *model) gatewayGet(g *gateway, q int, hand func(*task)) {
	if !g.alive {
		return
	}
	if h := g.held[q]; len(h) > 0 {
		g.held[q] = h[1:]
		g.handed[q]++
		m.lease(h[0].t, g)
		hand(h[0].t)
		return
	}
	g.gets[q] = append(g.gets[q], hand)
	m.pullFor(g, q)
}

// pullFor sends g's pull requests for its gets waiting on queue q: one
// for as many gets as its messages carried tasks lately, as a gateway
// keeps.
func (m *model) pullFor(g *gateway, q int) {
	s, k := m.streams[q], m.cfg.Costs
	get := m.frac(k.Node, k.NodeWorkerShare/3) // the node's part of a get, per task
	for float64(g.pulling[q])*max(1, g.perMsg[q]) < float64(len(g.gets[q])) {
		g.pulling[q]++
		m.send(func() {
			s.leader.p.do(get, func() {
				m.pull(s, pull{gw: g, deliver: func(pack []*task) {
					arrive := func() { m.send(func() { m.arrive(g, q, pack) }) }
					if len(pack) == 1 {
						arrive()
						return
					}
					s.leader.p.do(get*time.Duration(len(pack)-1), arrive)
				}})
			})
		})
	}
}

// arrive is a pack reaching gateway g: its tasks go to g's waiting gets
// in order, and g holds the rest.
func (m *model) arrive(g *gateway, q int, pack []*task) {
	g.pulling[q]--
	if !g.alive {
		// Fetched by a gateway that died meanwhile: back after AckWait.
		m.res.Orphaned += len(pack)
		m.c.after(m.cfg.AckWait, func() { m.comeBack(q, pack) })
		return
	}
	// A moving average, as qmaster's (notePerMsgLocked).
	g.perMsg[q] = (3*g.perMsg[q] + float64(len(pack))) / 4
	for _, t := range pack {
		if gets := g.gets[q]; len(gets) > 0 {
			g.gets[q] = gets[1:]
			g.handed[q]++
			m.lease(t, g)
			gets[0](t)
			continue
		}
		g.held[q] = append(g.held[q], heldTask{t, m.c.now})
	}
	m.pullFor(g, q)
}

// pull hands the first ready pack to p, or waits for one.
func (m *model) pull(s *stream, p pull) {
	if !p.gw.alive {
		return
	}
	if len(s.ready) == 0 {
		s.pulls = append(s.pulls, p)
		return
	}
	pack := s.ready[0]
	s.ready = s.ready[1:]
	p.deliver(pack)
}

func (m *model) lease(t *task, g *gateway) {
	t.gw, t.leased = g, m.c.now
	t.current++
	g.leases[t] = struct{}{}
}

// ready adds packs to a stream, at the front for redeliveries, and serves
// the waiting pulls.
func (m *model) ready(s *stream, packs [][]*task, front bool) {
	if front {
		s.ready = append(slices.Clone(packs), s.ready...)
	} else {
		s.ready = append(s.ready, packs...)
	}
	for len(s.pulls) > 0 && len(s.ready) > 0 {
		p := s.pulls[0]
		s.pulls = s.pulls[1:]
		if !p.gw.alive {
			continue
		}
		pack := s.ready[0]
		s.ready = s.ready[1:]
		p.deliver(pack)
	}
}

// packsOf splits ts into packs of at most n.
func packsOf(ts []*task, n int) [][]*task {
	var packs [][]*task
	for len(ts) > 0 {
		k := min(n, len(ts))
		packs = append(packs, ts[:k:k])
		ts = ts[k:]
	}
	return packs
}

// comeBack puts tasks back at the front of queue q's stream, each alone,
// for their next attempt: JetStream redelivers a pack whole, but the
// tasks of a pack none of whose tasks ran are few here.
func (m *model) comeBack(q int, ts []*task) {
	for _, t := range ts {
		t.attempt++
	}
	m.ready(m.streams[q], packsOf(ts, 1), true)
}

// moveOverdue stores again, alone at the end of their queue, the tasks
// each gateway has held for HoldFor, where another gateway's gets wait
// at the stream (the gateway's mover, every half HoldFor).
func (m *model) moveOverdue() {
	now := m.c.now
	for _, g := range m.gateways {
		if !g.alive {
			continue
		}
		for q, held := range g.held {
			s := m.streams[q]
			if len(held) == 0 || !slices.ContainsFunc(s.pulls, func(p pull) bool { return p.gw != g && p.gw.alive }) {
				continue
			}
			var moved []*task
			g.held[q] = slices.DeleteFunc(held, func(h heldTask) bool {
				if now-h.since < m.cfg.HoldFor {
					return false
				}
				moved = append(moved, h.t)
				g.moving[q] = append(g.moving[q], h)
				return true
			})
			if len(moved) == 0 {
				continue
			}
			m.res.Moves += len(moved)
			m.store(g, s, moved, 1, func() {
				// Sent: no longer the gateway's to lose if it dies.
				g.moving[q] = slices.DeleteFunc(g.moving[q], func(h heldTask) bool { return slices.Contains(moved, h.t) })
			}, func() {})
		}
	}
	m.c.after(m.cfg.HoldFor/2, m.moveOverdue)
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
	t.ended = w.taskDone
	m.c.after(m.cfg.Compute, func() {
		if w.epoch == epoch {
			m.call(w, t, w.gw)
		}
	})
}

func (m *model) measuring(t time.Duration) bool { return t >= m.measure[0] && t < m.measure[1] }

// put is the producer putting n new tasks, then getting results.
func (m *model) put(pr *producer, n int) {
	s, now := m.streams[pr.q], m.c.now
	ts := make([]*task, n)
	for i := range ts {
		m.ids++
		ts[i] = &task{id: m.ids, q: pr.q, put: now, attempt: 1}
	}
	m.send(func() {
		m.store(pr.gw, s, ts, m.packSize(pr.q), func() {}, func() {
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
}

// store puts ts through gateway g into s's stream, in packs of at most
// pack: the gateway's share of a producer's put (then sent runs), the
// leader's and the followers' stores; done runs at the leader once the
// tasks are ready.
func (m *model) store(g *gateway, s *stream, ts []*task, pack int, sent, done func()) {
	n := time.Duration(len(ts))
	node := m.frac(m.cfg.Costs.Node, (1-m.cfg.Costs.NodeWorkerShare)/3) * n
	g.p.do(m.producerGateway()*n, func() {
		sent()
		m.send(func() {
			s.leader.p.do(node, func() {
				m.replicate(s, node, func() {
					m.ready(s, packsOf(ts, pack), false)
					done()
				})
			})
		})
	})
}

// producerGateway is a gateway's CPU per task of a producer's put, and of
// its get of results.
func (m *model) producerGateway() time.Duration {
	return m.frac(m.cfg.Costs.Gateway, (1-m.cfg.Costs.GatewayWorkerShare)/2)
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
	s.leader.p.do(m.frac(k.Node, (1-k.NodeWorkerShare)*2/3)*time.Duration(n), func() {
		m.send(func() {
			pr.gw.p.do(m.producerGateway()*time.Duration(n), func() {
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
	renew := m.cfg.AckWait / 3
	// The time AckWait runs out for a delivery of at, renewed every third
	// of AckWait until now.
	expiry := func(at time.Duration) time.Duration {
		last := at
		if renew > 0 {
			last += (now - at) / renew * renew
		}
		return last + m.cfg.AckWait
	}
	for q, held := range g.held {
		// Its packs come back with the tasks it held of them, and with
		// those it had not sent on to be stored again yet.
		held = append(held, g.moving[q]...)
		for _, h := range held {
			m.c.after(expiry(h.since)-now, func() { m.comeBack(q, []*task{h.t}) })
		}
		m.res.Orphaned += len(held)
		g.held[q], g.moving[q], g.gets[q] = nil, nil, nil
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
	leased := make([]*task, 0, len(g.leases))
	for t := range g.leases {
		leased = append(leased, t)
	}
	// Map order is random: sort for a deterministic run.
	slices.SortFunc(leased, func(a, b *task) int { return cmp.Compare(a.id, b.id) })
	m.res.Orphaned += len(leased)
	for _, t := range leased {
		cur := t.current
		m.c.after(expiry(t.leased)-now, func() {
			if t.gw != g || t.current != cur {
				return
			}
			delete(g.leases, t)
			t.gw = nil
			m.comeBack(t.q, []*task{t})
		})
	}
}

// The gateways' pack sizes, as qmaster's (master/jsqueue/packsize.go).
const (
	sizeEvery = time.Second
	sizeTTL   = 15 * time.Second
)

// sayPackSizes is each gateway's look at its gets of each queue, every
// sizeEvery: the size it says, as qmaster's sayPackSizesOnce. What a
// gateway says is heard at once, and said anew at every look.
func (m *model) sayPackSizes() {
	for _, g := range m.gateways {
		if !g.alive {
			continue
		}
		leased := make([]int, len(g.handed))
		for t := range g.leases {
			leased[t.q]++
		}
		for q := range g.handed {
			handed := g.handed[q]
			g.rate[q] = (g.rate[q] + float64(handed)/sizeEvery.Seconds()) / 2
			g.handed[q] = 0
			if handed == 0 && leased[q] == 0 {
				g.said[q] = 0 // nothing to say; taken back
				continue
			}
			g.said[q], g.saidAt[q] = packSizeFor(g.rate[q], m.cfg.PackSpan, len(g.gets[q]), m.cfg.Pack), m.c.now
		}
	}
	m.c.after(sizeEvery, m.sayPackSizes)
}

// packSizeFor is qmaster's: a pack of span's worth of tasks at rate, or
// of what the gets waiting want, a power of two from 1 to most.
func packSizeFor(rate float64, span time.Duration, waiting, most int) int {
	n := max(1+int(rate*span.Seconds()), waiting)
	if n >= most {
		return most
	}
	return 1 << (bits.Len(uint(n)) - 1)
}

// packSize is the most tasks a put of queue q's packs: the least size
// the gateways said in the last sizeTTL, or Config.Pack.
func (m *model) packSize(q int) int {
	size := m.cfg.Pack
	if m.cfg.PackSpan <= 0 {
		return size
	}
	for _, g := range m.gateways {
		if g.said[q] > 0 && m.c.now-g.saidAt[q] <= sizeTTL {
			size = min(size, g.said[q])
		}
	}
	return size
}
