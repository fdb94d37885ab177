package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/wire"
)

// actionRequest is the body of POST /api/actions. Queue names go in the
// body, not the path, since a queue name may hold a slash.
type actionRequest struct {
	// Action is purge, pause, resume, requeue or drop.
	Action string `json:"action"`
	// Queue is the queue acted on. For requeue and drop it is the queue the
	// tasks died in: they are taken from its dead-letter queue.
	Queue string `json:"queue"`
	// IDs are the dead tasks to requeue (none: all) or to drop (required).
	IDs []uint64 `json:"ids,omitempty"`
}

type actionResponse struct {
	Count int    `json:"count"`
	Error string `json:"error,omitempty"`
}

// action runs one operator action.
func (h *Handler) action(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	var req actionRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, actionResponse{Error: "bad request: " + err.Error()})
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		writeJSON(w, http.StatusBadRequest, actionResponse{Error: "bad request: more than one JSON value in the body"})
		return
	}
	if req.Queue == "" {
		writeJSON(w, http.StatusBadRequest, actionResponse{Error: "bad request: no queue"})
		return
	}
	b := h.cfg.Backend
	var (
		n   int
		err error
	)
	switch req.Action {
	case "purge":
		n, err = b.Purge(req.Queue)
	case "pause":
		err = b.Pause(req.Queue)
	case "resume":
		err = b.Resume(req.Queue)
	case "requeue":
		n, err = b.Requeue(req.Queue, req.IDs)
	case "drop":
		if len(req.IDs) == 0 {
			writeJSON(w, http.StatusBadRequest, actionResponse{Error: "bad request: drop needs the ids of the tasks (purge the dead-letter queue to drop them all)"})
			return
		}
		n, err = b.Drop(queue.DeadLetterName(req.Queue), req.IDs)
	default:
		writeJSON(w, http.StatusBadRequest, actionResponse{Error: "bad request: unknown action " + req.Action})
		return
	}
	log := h.log.With("action", req.Action, "queue", req.Queue, "key", TokenName(r.Context()), "remote", r.RemoteAddr)
	if len(req.IDs) > 0 {
		log = log.With("tasks", req.IDs)
	}
	if err != nil {
		log.Warn("dashboard action failed", "err", err)
		writeJSON(w, statusOf(err), actionResponse{Count: n, Error: err.Error()})
		return
	}
	log.Info("dashboard action", "count", n)
	writeJSON(w, http.StatusOK, actionResponse{Count: n})
}

// statusOf maps the master's errors to HTTP statuses.
func statusOf(err error) int {
	switch {
	case errors.Is(err, wire.ErrUnknownQueue), errors.Is(err, queue.ErrUnknownQueue), errors.Is(err, queue.ErrNoSuchTask):
		return http.StatusNotFound
	case errors.Is(err, wire.ErrBadRequest), errors.Is(err, queue.ErrBadQueueName), errors.Is(err, queue.ErrBadArgument):
		return http.StatusBadRequest
	case errors.Is(err, wire.ErrShuttingDown), errors.Is(err, queue.ErrClosed),
		errors.Is(err, wire.ErrUnavailable), errors.Is(err, queue.ErrUnavailable):
		// A cluster without its quorum: the change may still take effect
		// once it is back, as a put that fails so may have stored its
		// tasks.
		return http.StatusServiceUnavailable
	case errors.Is(err, store.ErrDiskFull), errors.Is(err, wire.ErrDiskFull):
		return http.StatusInsufficientStorage // the change is refused until the disk has room
	}
	return http.StatusInternalServerError
}
