package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/qm-dev/qm/wire"
)

func TestStatsTableMarksPausedQueues(t *testing.T) {
	var b bytes.Buffer
	if err := writeStatsTable(&b, []wire.QueueStats{{Queue: "jobs", Ready: 2, Paused: true}, {Queue: "mail"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "jobs (paused)") || strings.Contains(b.String(), "mail (paused)") {
		t.Errorf("table:\n%s", b.String())
	}
}

func TestStatsTableMarksQueuesNotRead(t *testing.T) {
	var b bytes.Buffer
	if err := writeStatsTable(&b, []wire.QueueStats{{Queue: "jobs", Ready: 2}, {Queue: "mail", Unread: true}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "mail (not read in time)") || strings.Contains(b.String(), "jobs (not read") {
		t.Errorf("table:\n%s", b.String())
	}
}
