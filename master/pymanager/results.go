package pymanager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// Where a Python client's put goes. A BaseManager script has no notion
// of a result: it gets a task from one queue and puts what it computed to
// another. qm's producers (qmaster map) name a reply queue on their
// tasks and wait for wire.Results there. The rule that joins the two:
//
//   - When a connection's get delivers a task that names a reply queue,
//     the connection holds it (took), after any it holds already.
//   - The connection's next put to that reply queue, or to the workers'
//     results queue (Config.ResultsQueue: "results", where qworker puts
//     the results of tasks that name no reply queue, and which the
//     classic get_result_queue serves), is the result of the first task
//     it holds that the put may answer: it goes to the reply queue as a
//     wire.Result (task ID, worker "<process name>@<addr>", attempt,
//     value) (resultOf, publishResult). First in, first answered: a
//     script that gets several tasks, then puts their results, puts them
//     in the order it got them. (Answering the last task taken, as this
//     did before, gave the first result to the last task.)
//   - Every other put goes to the queue it names, as with a Python
//     master: a pipeline stage that gets from a and puts to b fills b.
//     Such a put also marks the tasks held as passed on: the next get
//     forgets them, so that a stage's tasks, which no put answers, do
//     not take the results of later ones. (A put to another queue
//     between a task and its result, a progress note, leaves it held.)

// maxHeld bounds the tasks a connection holds: a script that gets tasks
// and never answers them (it puts elsewhere) must not grow the list for
// ever. Past it the oldest is forgotten; its producer never gets its
// result, as it would not have anyway.
const maxHeld = 1024

// heldTask is a delivered task whose result this connection owes.
type heldTask struct {
	id       uint64
	attempt  int
	from     string // the queue it came from
	replyTo  string
	enqueued time.Time // when it was put
}

// took records the task a get just delivered to this connection.
func (p *conn) took(from string, t queue.Task) {
	if p.passedOn {
		p.held, p.passedOn = p.held[:0], false
	}
	if t.ReplyTo == "" {
		return
	}
	if len(p.held) == maxHeld {
		p.held = slices.Delete(p.held, 0, 1)
	}
	p.held = append(p.held, heldTask{id: t.ID, attempt: t.Attempts, from: from, replyTo: t.ReplyTo, enqueued: t.Enqueued})
}

// resultOf returns the task whose result a put to the named queue is, and
// forgets it, or false if the put is an ordinary one.
func (p *conn) resultOf(name string) (heldTask, bool) {
	for i, t := range p.held {
		if name == t.replyTo || name == p.s.cfg.ResultsQueue {
			p.held = slices.Delete(p.held, i, i+1)
			return t, true
		}
	}
	p.passedOn = len(p.held) > 0
	return heldTask{}, false
}

// publishResult puts value to t's reply queue as t's result, or drops it
// if that queue was deleted after t was put: no one waits for it there,
// and the put would make the queue again.
func (p *conn) publishResult(t heldTask, value []byte) error {
	if p.s.cfg.Backend.DeletedSince(t.replyTo, t.enqueued) {
		return nil
	}
	// The result's map holds the value one level down: refused here, it
	// would be refused as an item nested too deep, which is not what the
	// script put.
	if err := wire.CheckDepth(value, wire.MaxResultDepth); err != nil {
		return fmt.Errorf("%w: the result %w, the most a result may", queue.ErrBadArgument, err)
	}
	res, err := wire.Encode(wire.Result{TaskID: t.id, Worker: p.workerName(), Attempt: t.attempt, Value: value})
	if err != nil {
		return err
	}
	_, err = p.s.cfg.Backend.Put(context.Background(), queue.PutRequest{Queue: t.replyTo, Items: []queue.Item{{Payload: res}}, Results: true})
	if errors.Is(err, queue.ErrQueuedNotStored) {
		// The result is in its queue, and the data directory writes it
		// once it has room. An error would tell the script to put it
		// again, and the second put, the task answered, would land as an
		// ordinary item.
		p.log.Warn("result queued, not yet written to the data directory (its log retries the write)", "queue", t.replyTo, "task", t.id, "err", err)
		return nil
	}
	return err
}

// workerName names this client in the results it publishes.
func (p *conn) workerName() string {
	name := p.name
	if name == "" {
		name = Role
	}
	return name + "@" + p.c.Addr()
}
