package master

import (
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// The check a gateway asks before it makes a results queue anew: results
// go nowhere only if every task named the queue as its reply queue and
// was put before its last deletion.
func TestUnwantedResults(t *testing.T) {
	var d deletedQueues
	t0 := time.Now()
	early := []queue.Task{{ReplyTo: "r", Enqueued: t0}, {ReplyTo: "r", Enqueued: t0.Add(time.Second)}}
	if d.unwanted("r", nil) != nil || d.unwanted("r", []queue.Task{{Enqueued: t0}, early[0]}) != nil {
		t.Fatal("a check for results of no tasks, or of a task replying to no queue: their results are always wanted")
	}
	check := d.unwanted("r", early)
	if check == nil || check() {
		t.Fatal("results for a queue never deleted are unwanted")
	}
	d.add("r", t0.Add(time.Second/2), false)
	if check() {
		t.Fatal("unwanted, though a task was put after the deletion")
	}
	d.add("r", t0.Add(2*time.Second), false)
	if !check() {
		t.Fatal("wanted, though every task was put before the deletion")
	}
	if d.unwanted("other", early) != nil {
		t.Fatal("a check for results of tasks replying to another queue")
	}
}
