package jsqueue_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/queue"
)

// TestDeletionsKeptByRacingGateways: gateways of a three-node cluster
// keeping deletions of one queue at once all succeed, and the bucket
// ends with the latest of each time; a gateway reads them back.
func TestDeletionsKeptByRacingGateways(t *testing.T) {
	_, gw := clusterGateways(t)
	base := time.Now().Truncate(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Go(func() {
			d := queue.Deletion{At: base.Add(time.Duration(i) * time.Second)}
			if i%2 == 0 {
				d.CancelAt = d.At
			}
			if err := gw[i%3].KeepDeletion("map-1", d); err != nil {
				errs <- fmt.Errorf("keep %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The read may be served by a replica a write or two behind (CI saw
	// one): it must come to the latest, not stay short of it.
	want := queue.Deletion{At: base.Add(11 * time.Second), CancelAt: base.Add(10 * time.Second)}
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		got, err := gw[1].Deletions()
		if err != nil {
			return err
		}
		if d := got["map-1"]; len(got) != 1 || !d.At.Equal(want.At) || !d.CancelAt.Equal(want.CancelAt) {
			return fmt.Errorf("deletions %+v, want map-1's %+v", got, want)
		}
		return nil
	})
}
