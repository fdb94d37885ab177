package jsqueue

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// streamListPage is JetStream's answer to a listing of streams
// ($JS.API.STREAM.LIST), as the server sends it. The client's own listing
// (jetstream.ListStreams) drops Missing: the streams a clustered server
// could not read in time (their leaders lost, say, for the seconds an
// election takes) or that are offline. Left out unsaid, they read as
// queues that are not there.
type streamListPage struct {
	Error   *jetstream.APIError     `json:"error,omitempty"`
	Total   int                     `json:"total"`
	Offset  int                     `json:"offset"`
	Streams []*jetstream.StreamInfo `json:"streams"`
	Missing []string                `json:"missing,omitempty"`
}

// listAPI is the subject of JetStream's listing of streams.
const listAPI = "$JS.API.STREAM.LIST"

// listStreams lists the streams whose subjects match subj, page by page,
// within ctx: those read, and the names of those that were not. A stream
// whose every replica is offline comes in both (its config, and a name
// missing): a page covers as many streams as it names apart.
func (q *Queues) listStreams(ctx context.Context, subj string) (streams []*jetstream.StreamInfo, missing []string, err error) {
	offset := 0
	for {
		req, err := json.Marshal(map[string]any{"offset": offset, "subject": subj})
		if err != nil {
			return nil, nil, err
		}
		msg, err := q.cfg.Conn.RequestWithContext(ctx, listAPI, req)
		if err != nil {
			return nil, nil, err
		}
		var page streamListPage
		if err := json.Unmarshal(msg.Data, &page); err != nil {
			return nil, nil, fmt.Errorf("a listing of streams: %w", err)
		}
		if page.Error != nil {
			return nil, nil, page.Error
		}
		streams = append(streams, page.Streams...)
		named := make(map[string]bool, len(page.Streams)+len(page.Missing))
		for _, si := range page.Streams {
			named[si.Config.Name] = true
		}
		for _, name := range page.Missing {
			if !named[name] {
				missing = append(missing, name)
				named[name] = true
			}
		}
		n := len(named)
		offset = page.Offset + n
		if n == 0 || offset >= page.Total {
			return streams, missing, nil
		}
	}
}
