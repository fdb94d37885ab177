package master

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/master/pymanager"
	"github.com/qm-dev/qm/wire"
)

// metrics are the server's Prometheus metrics, in a registry of its own
// (no globals: two servers in one process, as in tests, do not clash).
//
// The queue figures are not counted per operation: they are read from
// the queue Manager when Prometheus scrapes (queueCollector), so the hot
// path pays only for one histogram Observe per request.
type metrics struct {
	reg *prometheus.Registry

	// byOp holds the request latency observer of every op number, so the
	// hot path does no label lookup; invalid ops share "other".
	byOp [256]prometheus.Observer
	// byPyMethod does the same for the methods of Python manager
	// requests, labelled py_<method>; other methods share "py_other".
	byPyMethod    map[string]prometheus.Observer
	handshakeFail *prometheus.CounterVec
	httpAuthFail  prometheus.Counter
	refusals      *prometheus.CounterVec
	// denied counts calls refused by the key's permissions (acl.go).
	denied        *prometheus.CounterVec
	leaseExpiries prometheus.Counter
	// cancelled counts tasks dropped unrun because their reply queue was
	// deleted with its tasks (deletedQueues.cancelled).
	cancelled *prometheus.CounterVec
	// chained counts requests that carried a Then (wire.Request.Then).
	chained prometheus.Counter
	// fsync observes the store's fsyncs; nil without a data directory.
	fsync prometheus.Histogram
}

// requestBuckets spans a cached put (tens of µs) to a get that waited
// out a long timeout (a get's latency includes its wait for a task).
var requestBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	reqDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "qm_request_duration_seconds",
		Help: "Time from reading a request to writing its response, by operation: a native client's op, or a Python manager client's " +
			"method as py_<method>; a get's includes its wait for a task.",
		Buckets: requestBuckets,
	}, []string{"op"})
	other := reqDur.WithLabelValues("other")
	for i := range m.byOp {
		if op := wire.Op(i); op.Valid() {
			m.byOp[i] = reqDur.WithLabelValues(op.String())
		} else {
			m.byOp[i] = other
		}
	}
	m.byPyMethod = make(map[string]prometheus.Observer)
	for _, method := range pymanager.Methods() {
		m.byPyMethod[method] = reqDur.WithLabelValues("py_" + method)
	}
	m.byPyMethod[""] = reqDur.WithLabelValues("py_other")
	m.handshakeFail = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qm_handshake_failures_total",
		Help: "Connections closed before their handshake completed, by reason: auth (wrong key), timeout, closed (the client left), protocol, " +
			"tls (TLS handshake failed), unauth_limit (--max-unauth-conns), max_conns (--max-conns).",
	}, []string{"reason"})
	for _, r := range []string{"auth", "timeout", "closed", "protocol", "tls", "unauth_limit", "max_conns"} {
		m.handshakeFail.WithLabelValues(r) // exported at 0 from the start
	}
	m.httpAuthFail = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "qm_http_auth_failures_total",
		Help: "Requests to the HTTP endpoints refused for a wrong key (a bearer token, or the dashboard's login form), or refused unchecked (429) from an address holding its share of delays.",
	})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qm_refusals_total",
		Help: "Calls refused at a resource limit, by limit: max_streams (--max-streams), max_memory (--max-memory).",
	}, []string{"limit"})
	for _, r := range []string{"max_streams", "max_memory"} {
		m.refusals.WithLabelValues(r)
	}
	m.denied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qm_permission_denied_total",
		Help: "Calls refused because the key the client authenticated with may not make them (qmaster --acl), by key name and " +
			"operation: a native client's op, or a Python manager client's method as py_<method>.",
	}, []string{"key", "op"})
	m.leaseExpiries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "qm_lease_expiries_total",
		Help: "Leases that ran out before their task was acked or nacked (the tasks were requeued or dead-lettered).",
	})
	m.cancelled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qm_tasks_cancelled_total",
		Help: "Tasks dropped unrun, as they would have been handed out, because their reply queue was deleted with its tasks (a map that ended), by queue. The queue's gets, acks and done count them too.",
	}, []string{"queue"})
	m.chained = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "qm_chained_requests_total",
		Help: "Requests that carried a second one to run in the same call: a worker's complete and its next get, a producer's put and its get. " +
			"Each op of a chain is also timed in qm_request_duration_seconds.",
	})
	inProgress := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qm_calls_in_progress",
		Help: "Calls of every client being read, handled or answered now; a shutdown waits for them.",
	}, func() float64 { return float64(s.callsInProgress()) })
	m.reg.MustRegister(reqDur, m.handshakeFail, m.httpAuthFail, m.refusals, m.denied, m.leaseExpiries, m.cancelled, m.chained, inProgress, &queueCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(s.cfg.Collectors...)
	if s.cfg.DataDir != "" {
		m.fsync = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "qm_store_fsync_duration_seconds",
			Help:    "Duration of the fsyncs of the data directory's log.",
			Buckets: prometheus.ExponentialBuckets(.0001, 2, 16), // 100µs to 3.3s
		})
		writable := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "qm_store_writable",
			Help: "1 while the data directory takes writes; 0 while it does not (a full disk, a write error), when puts and operators' changes are refused.",
		}, func() float64 {
			if st := s.store; st != nil && st.Writable() != nil {
				return 0
			}
			return 1
		})
		m.reg.MustRegister(m.fsync, writable)
	}
	return m
}

// observe records the latency of one request of op that started at start.
func (m *metrics) observe(op wire.Op, start time.Time) {
	m.byOp[op].Observe(time.Since(start).Seconds())
}

// observePython records the latency of one Python request of method
// that started at start.
func (m *metrics) observePython(method string, start time.Time) {
	o, ok := m.byPyMethod[method]
	if !ok {
		o = m.byPyMethod[""]
	}
	o.Observe(time.Since(start).Seconds())
}

// handshakeFailed counts a connection whose handshake failed with err.
func (m *metrics) handshakeFailed(err error) {
	var ne net.Error
	reason := "protocol"
	switch {
	case errors.Is(err, errTLS):
		reason = "tls"
	case errors.Is(err, errUnauthLimit):
		reason = "unauth_limit"
	case errors.Is(err, errMaxConns):
		reason = "max_conns"
	case errors.Is(err, auth.ErrAuthFailed):
		reason = "auth"
	case errors.As(err, &ne) && ne.Timeout():
		reason = "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		reason = "closed"
	}
	m.handshakeFail.WithLabelValues(reason).Inc()
}

// refused counts a call refused at limit.
func (m *metrics) refused(limit string) {
	m.refusals.WithLabelValues(limit).Inc()
}

// queueCollector reads the queue figures and the connected clients when
// Prometheus scrapes.
type queueCollector struct{ s *Server }

var (
	queueLabels = []string{"queue"}
	descReady   = prometheus.NewDesc("qm_queue_ready_tasks", "Tasks ready to be handed out.", queueLabels, nil)
	descLeased  = prometheus.NewDesc("qm_queue_leased_tasks", "Tasks leased to workers and not yet acked.", queueLabels, nil)
	descDead    = prometheus.NewDesc("qm_queue_dead_tasks", "Tasks in the queue's dead-letter queue (QUEUE.dead).", queueLabels, nil)
	descWaiting = prometheus.NewDesc("qm_queue_consumers", "Gets blocked waiting for a task of the queue.", queueLabels, nil)
	descOldest  = prometheus.NewDesc("qm_queue_oldest_ready_seconds", "Time since the task at the front of the queue was put (a delayed or retried task's first put, not when it came due); 0 when none is ready.", queueLabels, nil)
	descPaused  = prometheus.NewDesc("qm_queue_paused", "1 if the queue is paused (hands out no task), else 0.", queueLabels, nil)
	descDelayed = prometheus.NewDesc("qm_queue_delayed_tasks", "Tasks not yet due: delayed puts and failed tasks waiting out their retry backoff.", queueLabels, nil)
	descRetry   = prometheus.NewDesc("qm_queue_retrying_tasks", "Failed tasks waiting out their retry backoff (counted in qm_queue_delayed_tasks too).", queueLabels, nil)
	descNextDue = prometheus.NewDesc("qm_queue_next_due_seconds", "Seconds until the first delayed task is due (0 if it is due); absent when none is delayed.", queueLabels, nil)
	descPuts    = prometheus.NewDesc("qm_queue_puts_total", "Tasks put into the queue.", queueLabels, nil)
	descGets    = prometheus.NewDesc("qm_queue_gets_total", "Deliveries of the queue's tasks to workers.", queueLabels, nil)
	descAcks    = prometheus.NewDesc("qm_queue_acks_total", "Tasks acked (done) by workers.", queueLabels, nil)
	descNacks   = prometheus.NewDesc("qm_queue_nacks_total", "Failed attempts reported by workers.", queueLabels, nil)
	descExpired = prometheus.NewDesc("qm_queue_expired_total", "Leases of the queue's tasks that ran out.", queueLabels, nil)
	// A worker killed mid-task fails an attempt as a nack or an expired
	// lease does; without it, a failure rate from the counters missed it.
	descDisconnected = prometheus.NewDesc("qm_queue_disconnected_total", "Leases of the queue's tasks that ended as their worker disconnected.", queueLabels, nil)
	descDone         = prometheus.NewDesc("qm_queue_done_total", "Tasks finished for good: acked, or taken without a lease.", queueLabels, nil)
	descUnread       = prometheus.NewDesc("qm_queues_unread", "Queues whose figures were not read in time for this scrape (a gateway whose JetStream is slow to answer, as while a stream has no leader): their qm_queue_* series are absent from it.", nil, nil)
	descListed       = prometheus.NewDesc("qm_queues_list_ok", "1 if the queues could be listed for this scrape, 0 if not (a gateway whose cluster is out of its reach, as without a majority of its nodes; then the qm_queue_* series are missing).", nil, nil)
	descClients      = prometheus.NewDesc("qm_clients", "Connected clients by role: worker, producer, admin, python, none (said no role) or other.", []string{"role"}, nil)
)

// Describe implements prometheus.Collector.
func (qc *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descLeased, descDead, descWaiting, descOldest, descPaused,
		descDelayed, descRetry, descNextDue, descPuts, descGets, descAcks, descNacks, descExpired, descDisconnected, descDone, descUnread, descListed, descClients} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (qc *queueCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, l string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l)
	}
	counter := func(d *prometheus.Desc, v uint64, l string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l)
	}
	read, unread, err := qc.s.queueStats()
	ch <- prometheus.MustNewConstMetric(descUnread, prometheus.GaugeValue, float64(unread))
	listed := 1.0
	if err != nil {
		listed = 0
	}
	ch <- prometheus.MustNewConstMetric(descListed, prometheus.GaugeValue, listed)
	for _, st := range read {
		q := st.Queue
		gauge(descReady, float64(st.Ready), q)
		gauge(descLeased, float64(st.Leased), q)
		gauge(descDead, float64(st.Dead), q)
		gauge(descWaiting, float64(st.Consumers), q)
		gauge(descOldest, st.OldestAge.Seconds(), q)
		paused := 0.0
		if st.Paused {
			paused = 1
		}
		gauge(descPaused, paused, q)
		gauge(descDelayed, float64(st.Delayed), q)
		gauge(descRetry, float64(st.Retrying), q)
		if !st.NextDue.IsZero() {
			gauge(descNextDue, max(time.Until(st.NextDue), 0).Seconds(), q)
		}
		counter(descPuts, st.Puts, q)
		counter(descGets, st.Gets, q)
		counter(descAcks, st.Acks, q)
		counter(descNacks, st.Nacks, q)
		counter(descExpired, st.Expired, q)
		counter(descDisconnected, st.Disconnected, q)
		counter(descDone, st.Done, q)
	}
	for role, n := range qc.s.clientRoles() {
		gauge(descClients, float64(n), role)
	}
}

// callsInProgress counts the calls of every connection from their first
// byte to their response.
func (s *Server) callsInProgress() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for c := range s.conns {
		n += c.active.Load()
	}
	return n
}

// clientRoles counts the connected clients by role. A role a client
// named that qm does not know counts as "other", so that no client can
// make up label values.
func (s *Server) clientRoles() map[string]int {
	roles := map[string]int{"worker": 0, "producer": 0, "admin": 0, pymanager.Role: 0, "none": 0, "other": 0}
	s.mu.Lock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		info, ok := c.info()
		if !ok {
			continue // still in its handshake, or gone
		}
		switch role := info.Role; role {
		case "":
			roles["none"]++
		case "worker", "producer", "admin", pymanager.Role:
			roles[role]++
		default:
			roles["other"]++
		}
	}
	return roles
}
