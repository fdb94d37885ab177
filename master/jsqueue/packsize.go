package jsqueue

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// Pack sizes follow the gateways that hand the tasks out.
//
// A pack goes whole to the gateway whose get fetched it, and what that
// get does not take waits there for the gateway's next gets (pack.go).
// With few workers of a queue on each gateway, those tasks wait behind
// busy workers while other gateways' workers take newer ones: with one
// worker of a queue a gateway and 1 s handlers, packs of 2 lengthened
// the round trip's p99 by half and packs of 4 or more by two and a half
// times (docs/SCALING.md).
//
// So every gateway that hands out a queue's tasks says, on a core NATS
// subject of the queue, how big a pack it would hand out within
// Config.PackSpan at the rate its gets took the queue's tasks lately (or
// as many as its waiting gets want, if more), as a power of two up to
// Config.Pack. It says it when it changes and every sizeRefresh while it
// hands out tasks or holds leases of them, and takes it back (a size of
// 0) when it did neither since its last look. A gateway putting tasks
// packs them no bigger than the least size said in the last sizeTTL;
// none said, Config.Pack (so the first puts of a queue, before its
// workers' gateways said a size, are packed fully). Results keep
// Config.Pack: their store through two gateways is one only when both
// pack them alike (resultsMsgIDs). Puts with request IDs: packSizeOf.

const (
	// DefaultPackSpan is Config.PackSpan's default: a quarter of the
	// default HoldFor. With it, one queue's 50 workers a gateway running
	// 1 s tasks get packs of 8, and CPU-bound ones full packs.
	DefaultPackSpan = 250 * time.Millisecond
	sizeEvery       = time.Second
	sizeRefresh     = 5 * time.Second
	sizeTTL         = 3 * sizeRefresh
	// sizeSubjects is the subjects' prefix; the queue's token follows.
	sizeSubjects = "qm.packsize."
	// layoutsBucket keeps, for a put with a request ID, the pack size
	// its first send used (packSizeOf).
	layoutsBucket = "qm_layouts"
	layoutsLook   = time.Minute
)

// demand is what a gateway measures of its gets of a queue, under
// Queues.mu.
type demand struct {
	handed int     // tasks handed out since the last look
	rate   float64 // tasks a second, a moving average
	said   int     // the size last said, 0 for none
	saidAt time.Time
}

// sizeSaid is a gateway's size for a queue, and when it came.
type sizeSaid struct {
	size int
	at   time.Time
}

// packSizeFor is the size a pack of span's worth of tasks at rate has,
// or of what the gets waiting want: a power of two, at least 1, at most
// most.
func packSizeFor(rate float64, span time.Duration, waiting, most int) int {
	n := max(1+int(rate*span.Seconds()), waiting)
	if n >= most {
		return most
	}
	return 1 << (bits.Len(uint(n)) - 1)
}

// noteHanded counts n tasks of queue name handed out by a get.
func (q *Queues) noteHanded(name string, n int) {
	q.mu.Lock()
	if l := q.locals[name]; l != nil {
		l.demand.handed += n
	}
	q.mu.Unlock()
}

// sayPackSizes says, every sizeEvery until Close, the pack size of each
// queue this gateway hands out tasks of (see the top of the file).
func (q *Queues) sayPackSizes() {
	t := time.NewTicker(sizeEvery)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-q.ctx.Done():
			return
		case now := <-t.C:
			q.sayPackSizesOnce(now, now.Sub(last))
			last = now
		}
	}
}

// sayPackSizesOnce is a look of sayPackSizes, over elapsed.
func (q *Queues) sayPackSizesOnce(now time.Time, elapsed time.Duration) {
	type said struct {
		queue string
		size  int
	}
	var says []said
	q.mu.Lock()
	leased := make(map[string]int)
	for k := range q.leases {
		leased[k.queue]++
	}
	for name, l := range q.locals {
		d := &l.demand
		handed := d.handed
		d.rate = (d.rate + float64(handed)/elapsed.Seconds()) / 2
		d.handed = 0
		waiting := 0
		for w := range l.waiting {
			waiting += w.want
		}
		if handed == 0 && leased[name] == 0 {
			// None handed out since the last look, and none running:
			// nothing to say, and what was said is taken back. Gets
			// waiting alone say nothing: idle workers tell nothing of how
			// soon they would run a pack's tasks, and saying what they
			// want made the first second of a burst through idle workers
			// pack its tasks two by two. Workers running long tasks are
			// not idle: their gateway goes on saying.
			if d.said != 0 {
				d.said = 0
				says = append(says, said{name, 0})
			}
			continue
		}
		size := packSizeFor(d.rate, q.cfg.PackSpan, waiting, q.cfg.Pack)
		if size != d.said || now.Sub(d.saidAt) >= sizeRefresh {
			d.said, d.saidAt = size, now
			says = append(says, said{name, size})
		}
	}
	q.mu.Unlock()
	q.sizeMu.Lock()
	for tok, byGateway := range q.sizes {
		for from, s := range byGateway {
			if now.Sub(s.at) > sizeTTL {
				delete(byGateway, from) // a gateway gone, or with no demand now
			}
		}
		if len(byGateway) == 0 {
			delete(q.sizes, tok)
		}
	}
	q.sizeMu.Unlock()
	for _, s := range says {
		// Lost, it is said again at the next refresh; until then packs
		// follow what the other gateways said.
		_ = q.cfg.Conn.Publish(sizeSubjects+token(s.queue), []byte(strconv.Itoa(s.size)+" "+q.putIDs))
	}
}

// heardPackSize takes a gateway's size for a queue.
func (q *Queues) heardPackSize(m *nats.Msg) {
	size, from, ok := strings.Cut(string(m.Data), " ")
	n, err := strconv.Atoi(size)
	if !ok || err != nil || n < 0 {
		return
	}
	tok := strings.TrimPrefix(m.Subject, sizeSubjects)
	q.sizeMu.Lock()
	defer q.sizeMu.Unlock()
	byGateway := q.sizes[tok]
	if byGateway == nil {
		byGateway = make(map[string]sizeSaid)
		q.sizes[tok] = byGateway
	}
	if n == 0 {
		delete(byGateway, from) // taken back
		return
	}
	byGateway[from] = sizeSaid{size: n, at: time.Now()}
}

// packSize is the most tasks a put of queue name's tasks packs in one
// message: the least size said lately, or Config.Pack.
func (q *Queues) packSize(name string) int {
	size := q.cfg.Pack
	if q.cfg.PackSpan < 0 {
		return size
	}
	now := time.Now()
	q.sizeMu.Lock()
	defer q.sizeMu.Unlock()
	for _, s := range q.sizes[token(name)] {
		if now.Sub(s.at) <= sizeTTL { // else swept by sayPackSizesOnce
			size = min(size, s.size)
		}
	}
	return size
}

// packSizeOf returns the most tasks put req packs in one message: 1 for
// none. A put with a request ID is stored once however often it is sent
// only if every send is laid out alike (requestMsgIDs), and the size said
// may have changed in between, or differ at another gateway. So a first
// send that packs smaller than Config.Pack records its size, and a send
// again (req.Resent) takes the size recorded, or, if none is, records
// Config.Pack's, which the first send then had: the record is made at
// most once, by whichever send comes first, so sends racing each other
// agree too. A first send at Config.Pack, the usual case, costs nothing.
func (q *Queues) packSizeOf(req queue.PutRequest, s *stream) (int, error) {
	if q.cfg.Pack <= 1 || len(req.Items) <= 1 || queue.IsDeadLetterName(req.Queue) {
		return 1, nil
	}
	if req.Results {
		return q.cfg.Pack, nil // see the top of the file
	}
	if !slices.ContainsFunc(req.Items, func(it queue.Item) bool { return it.Priority == 0 }) {
		return 1, nil // tasks with a priority are never packed
	}
	size := q.packSize(req.Queue)
	if req.RequestID == "" || size == q.cfg.Pack && !req.Resent {
		return size, nil
	}
	if req.Resent {
		size = q.cfg.Pack
	}
	ctx, cancel := q.call()
	defer cancel()
	// The record must last as long as the IDs: the stream's dedup window,
	// which the gateway that made it chose.
	ttl := q.cfg.DedupWindow
	if info := s.st.CachedInfo(); info != nil {
		ttl = max(ttl, info.Config.Duplicates)
	}
	kv, err := q.layouts(ctx, ttl+q.cfg.RequestTimeout)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256([]byte(req.Queue + "\x00" + req.RequestID))
	key := base64.RawURLEncoding.EncodeToString(sum[:16])
	for {
		_, err := kv.Create(ctx, key, []byte(strconv.Itoa(size)))
		if !errors.Is(err, jetstream.ErrKeyExists) {
			if err != nil {
				q.forgetLayouts(kv, err)
				return 0, q.engineErr("record the layout of put "+req.Queue, err)
			}
			return size, nil
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired in between: record it now
		}
		if err != nil {
			q.forgetLayouts(kv, err)
			return 0, q.engineErr("read the layout of put "+req.Queue, err)
		}
		n, err := strconv.Atoi(string(e.Value()))
		if err != nil || n < 1 || n > MaxPack {
			return 0, fmt.Errorf("the layout of put %s recorded in %s is %q, not a pack size", req.Queue, layoutsBucket, e.Value())
		}
		return n, nil
	}
}

// layouts returns the bucket of the layouts of puts with request IDs,
// creating it on first use, its entries lasting at least ttl. A gateway
// needing a longer ttl than the bucket's lengthens it; none shortens it
// but in a race (two gateways lengthening it at once, the later to the
// shorter), so the TTL is looked at again every layoutsLook.
func (q *Queues) layouts(ctx context.Context, ttl time.Duration) (jetstream.KeyValue, error) {
	q.layoutMu.Lock()
	defer q.layoutMu.Unlock()
	if q.layoutKV != nil && q.layoutTTL >= ttl && time.Since(q.layoutLooked) < layoutsLook {
		return q.layoutKV, nil
	}
	q.layoutLooked = time.Now()
	kv, err := q.js.KeyValue(ctx, layoutsBucket)
	if err == nil {
		var st jetstream.KeyValueStatus
		if st, err = kv.Status(ctx); err == nil && st.TTL() >= ttl {
			q.layoutKV, q.layoutTTL = kv, st.TTL()
			return kv, nil
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, q.engineErr("open the layouts of puts with request IDs", err)
	}
	// Another gateway may shorten it in between, to a TTL it needs: look
	// again, and lengthen it again.
	for range 3 {
		kv, err = q.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:   layoutsBucket,
			TTL:      ttl,
			Replicas: q.cfg.Replicas,
			Storage:  jetstream.FileStorage,
		})
		if err != nil {
			return nil, q.engineErr("open the layouts of puts with request IDs", err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return nil, q.engineErr("open the layouts of puts with request IDs", err)
		}
		if st.TTL() >= ttl {
			q.layoutKV, q.layoutTTL = kv, st.TTL()
			return kv, nil
		}
	}
	return nil, fmt.Errorf("%w: jetstream: the layouts of puts with request IDs keep a TTL under %v: gateways with other dedup windows change it", queue.ErrUnavailable, ttl)
}

// forgetLayouts drops kv, the bucket of layouts, after err, if err says it
// may be gone: the next put makes it anew.
func (q *Queues) forgetLayouts(kv jetstream.KeyValue, err error) {
	if !noStream(err) && !isGone(err) && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return
	}
	q.layoutMu.Lock()
	if q.layoutKV == kv {
		q.layoutKV = nil
	}
	q.layoutMu.Unlock()
}
