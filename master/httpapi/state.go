package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// Limits of what one state answer carries.
const (
	maxChartQueues = 200 // queues with a history; more are listed without charts
	maxDeadShown   = 50  // dead tasks listed per dead-letter queue
	maxPayloadText = 200 // bytes of a dead task's payload shown
)

// sample is one queue's figures at one time.
type sample struct {
	ready, leased, dead int
	puts, acks, nacks   uint64
}

type snapshot struct {
	at     time.Time
	queues map[string]sample
}

// history is a ring of the last snapshots of every queue, for the charts.
type history struct {
	mu   sync.Mutex
	ring []snapshot
	next int // where the next snapshot goes
	n    int
}

func newHistory(size int) *history { return &history{ring: make([]snapshot, size)} }

func (h *history) add(at time.Time, stats []wire.QueueStats) {
	snap := snapshot{at: at, queues: make(map[string]sample, min(len(stats), maxChartQueues))}
	for _, st := range stats {
		if len(snap.queues) == maxChartQueues {
			break
		}
		snap.queues[st.Queue] = sample{ready: st.Ready, leased: st.Leased, dead: st.Dead, puts: st.Puts, acks: st.Acks, nacks: st.Nacks}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = snap
	h.next = (h.next + 1) % len(h.ring)
	h.n = min(h.n+1, len(h.ring))
}

// series returns the history of every queue, oldest first.
func (h *history) series() map[string]*seriesJSON {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]*seriesJSON)
	var prev snapshot
	for i := range h.n {
		snap := h.ring[(h.next-h.n+i+len(h.ring))%len(h.ring)]
		dt := snap.at.Sub(prev.at).Seconds()
		for q, s := range snap.queues {
			sr := out[q]
			if sr == nil {
				sr = &seriesJSON{}
				out[q] = sr
			}
			p, ok := prev.queues[q]
			sr.T = append(sr.T, snap.at.UnixMilli())
			sr.Ready = append(sr.Ready, s.ready)
			sr.Leased = append(sr.Leased, s.leased)
			sr.Dead = append(sr.Dead, s.dead)
			sr.PutRate = append(sr.PutRate, rate(ok, p.puts, s.puts, dt))
			sr.AckRate = append(sr.AckRate, rate(ok, p.acks, s.acks, dt))
			sr.NackRate = append(sr.NackRate, rate(ok, p.nacks, s.nacks, dt))
		}
		prev = snap
	}
	return out
}

// rate is the per-second rate between two readings of a counter; 0 for
// the first reading or after the counter restarted (its queue was
// deleted and created again).
func rate(ok bool, before, after uint64, dt float64) float64 {
	if !ok || after < before || dt <= 0 {
		return 0
	}
	return float64(after-before) / dt
}

// Run samples the queues every Config.SampleEvery for the dashboard's
// charts until ctx ends.
func (h *Handler) Run(ctx context.Context) {
	t := time.NewTicker(h.cfg.SampleEvery)
	defer t.Stop()
	for {
		stats, _ := h.cfg.Backend.Queues() // a failed listing samples none
		h.hist.add(time.Now(), stats)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type stateJSON struct {
	Now         time.Time   `json:"now"`
	SampleEvery float64     `json:"sample_every_s"`
	Queues      []queueJSON `json:"queues"`
	// QueuesError says why the queues could not be listed, if they
	// could not.
	QueuesError string       `json:"queues_error,omitempty"`
	Clients     []clientJSON `json:"clients"`
	// ClientsNote says why the clients are this gateway's alone, if
	// the others could not be asked.
	ClientsNote string     `json:"clients_note,omitempty"`
	Dead        []deadJSON `json:"dead"`
}

type queueJSON struct {
	wire.QueueStats
	IsDead  bool        `json:"is_dead"`
	History *seriesJSON `json:"history,omitempty"`
}

type seriesJSON struct {
	T        []int64   `json:"t"` // unix milliseconds
	Ready    []int     `json:"ready"`
	Leased   []int     `json:"leased"`
	Dead     []int     `json:"dead"`
	PutRate  []float64 `json:"put_rate"`
	AckRate  []float64 `json:"ack_rate"`
	NackRate []float64 `json:"nack_rate"`
}

type clientJSON struct {
	wire.ClientInfo
	Tasks []leaseJSON `json:"tasks"`
}

type leaseJSON struct {
	Queue   string    `json:"queue"`
	ID      uint64    `json:"id"`
	Attempt int       `json:"attempt"`
	Since   time.Time `json:"since"`
}

type deadJSON struct {
	Queue     string     `json:"queue"`      // the queue the tasks died in
	DeadQueue string     `json:"dead_queue"` // where they are now
	Count     int        `json:"count"`
	Tasks     []deadTask `json:"tasks"`
}

type deadTask struct {
	ID        uint64    `json:"id"`
	Attempt   int       `json:"attempt"`
	LastError string    `json:"last_error"`
	Enqueued  time.Time `json:"enqueued"`
	Payload   string    `json:"payload"` // as JSON, cut to maxPayloadText bytes
}

// state answers the dashboard's poll: every queue with its history, the
// clients and what they hold, and the dead-letter queues.
func (h *Handler) state(w http.ResponseWriter, r *http.Request) {
	b := h.cfg.Backend
	stats, err := b.Queues()
	series := h.hist.series()
	st := stateJSON{
		Now:         time.Now(),
		SampleEvery: h.cfg.SampleEvery.Seconds(),
		Queues:      make([]queueJSON, 0, len(stats)),
		Clients:     []clientJSON{},
		Dead:        []deadJSON{},
	}
	if err != nil {
		st.QueuesError = err.Error()
	}
	for _, qs := range stats {
		dead := queue.IsDeadLetterName(qs.Queue)
		st.Queues = append(st.Queues, queueJSON{QueueStats: qs, IsDead: dead, History: series[qs.Queue]})
		if !dead || qs.Ready+qs.Leased == 0 {
			continue
		}
		d := deadJSON{
			Queue:     strings.TrimSuffix(qs.Queue, queue.DeadSuffix),
			DeadQueue: qs.Queue,
			Count:     qs.Ready + qs.Leased,
			Tasks:     []deadTask{},
		}
		ts, _ := b.Peek(qs.Queue, maxDeadShown) // the queue may be gone meanwhile: list none
		for _, t := range ts {
			d.Tasks = append(d.Tasks, deadTask{ID: t.ID, Attempt: t.Attempt, LastError: t.LastError, Enqueued: t.Enqueued, Payload: payloadText(t.Payload)})
		}
		st.Dead = append(st.Dead, d)
	}
	clients, note := b.Clients(r.Context())
	st.ClientsNote = note
	for _, c := range clients {
		cj := clientJSON{ClientInfo: c.ClientInfo, Tasks: make([]leaseJSON, len(c.Tasks))}
		for i, l := range c.Tasks {
			cj.Tasks[i] = leaseJSON(l)
		}
		st.Clients = append(st.Clients, cj)
	}
	writeJSON(w, http.StatusOK, st)
}

// payloadText renders a payload as JSON, cut to maxPayloadText bytes.
func payloadText(p []byte) string {
	v, err := wire.DecodeValue(p)
	if err != nil {
		return "(undecodable: " + err.Error() + ")"
	}
	b, err := jsonval.Marshal(v)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) <= maxPayloadText {
		return string(b)
	}
	cut := maxPayloadText
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return string(b[:cut]) + "…"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}
