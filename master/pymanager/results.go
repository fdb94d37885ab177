package pymanager

import (
	"context"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// Where a Python client's put goes. A BaseManager script has no notion
// of a result: it gets a task from one queue and puts what it computed to
// another. qm's producers (qmaster map) name a reply queue on their
// tasks and wait for wire.Results there. The rule that joins the two:
//
//   - When a connection's get delivers a task that names a reply queue,
//     the connection holds it (took).
//   - The connection's next put to that reply queue, or to the workers'
//     results queue (Config.ResultsQueue: "results", where qworker puts
//     the results of tasks that name no reply queue, and which the
//     classic get_result_queue serves), is that task's result: it goes to
//     the reply queue as a wire.Result (task ID, worker
//     "<process name>@<addr>", attempt, value) (resultOf, publishResult).
//   - Every other put goes to the queue it names, as with a Python
//     master: a pipeline stage that gets from a and puts to b fills b.

// heldTask is a delivered task whose result this connection owes.
type heldTask struct {
	id      uint64
	attempt int
	from    string // the queue it came from
	replyTo string
}

// took records the task a get just delivered to this connection.
func (p *conn) took(from string, t queue.Task) {
	p.held = nil
	if t.ReplyTo != "" {
		p.held = &heldTask{id: t.ID, attempt: t.Attempts, from: from, replyTo: t.ReplyTo}
	}
}

// resultOf returns the task whose result a put to the named queue is, and
// forgets it, or nil if the put is an ordinary one.
func (p *conn) resultOf(name string) *heldTask {
	t := p.held
	if t == nil || name != t.replyTo && name != p.s.cfg.ResultsQueue {
		return nil
	}
	p.held = nil
	return t
}

// publishResult puts value to t's reply queue as t's result.
func (p *conn) publishResult(t *heldTask, value []byte) error {
	res, err := wire.Encode(wire.Result{TaskID: t.id, Worker: p.workerName(), Attempt: t.attempt, Value: value})
	if err != nil {
		return err
	}
	_, err = p.s.cfg.Backend.Put(context.Background(), queue.PutRequest{Queue: t.replyTo, Items: []queue.Item{{Payload: res}}, Results: true})
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
