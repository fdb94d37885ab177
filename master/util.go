package master

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

const syscallEMFILE = syscall.EMFILE

func sortClients(cs []wire.ClientInfo) {
	slices.SortFunc(cs, func(a, b wire.ClientInfo) int { return cmp.Compare(a.ID, b.ID) })
}

func deadMessage(t queue.Task) string {
	last := strings.TrimSpace(t.LastError)
	if last == "" {
		last = "no error text"
	}
	attempts := "attempts"
	if t.Attempts == 1 {
		attempts = "attempt"
	}
	return fmt.Sprintf("failed after %d %s: %s", t.Attempts, attempts, last)
}
