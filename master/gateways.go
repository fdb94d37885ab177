package master

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/qm-dev/qm/wire"
)

// GatewayAsker is implemented by Queues whose servers are gateways of
// one cluster (package jsqueue's): each gateway can ask the others what
// only each knows, which the server answers for its part (answerGateways):
// the clients connected to it, and its Python clients' tasks not yet
// marked done.
type GatewayAsker interface {
	// Answer answers every question on topic with f's answer to it.
	Answer(topic string, f func(question []byte) []byte) error
	// Ask asks every gateway, this one included, calling each with each
	// answer and the ID of the gateway that gave it.
	Ask(ctx context.Context, topic string, question []byte, each func(gateway string, answer []byte)) error
	// AskGateway asks one gateway, named by its ID.
	AskGateway(ctx context.Context, topic, gateway string, question []byte) ([]byte, error)
	// GatewayID is this gateway's ID.
	GatewayID() string
}

// The topics the gateways of a cluster ask each other about.
const (
	topicClients    = "clients"
	topicUnfinished = "python-unfinished"
	topicTakeDone   = "python-take-done"
	topicDeleted    = "deleted"
)

// deletedNotice tells the gateways of a cluster that a client deleted a
// queue (deletedQueues), so that each drops the results of the tasks
// that replied to it, and, with Cancel, the tasks themselves.
type deletedNotice struct {
	Queue  string    `msgpack:"queue"`
	At     time.Time `msgpack:"at"`
	Cancel bool      `msgpack:"cancel,omitempty"`
}

// askFor bounds a question to the other gateways.
const askFor = 5 * time.Second

// gatewayClients is a gateway's answer about its clients.
type gatewayClients struct {
	Gateway string            `msgpack:"gateway"`
	Clients []wire.ClientInfo `msgpack:"clients"`
}

// answerGateways answers the other gateways' questions.
func (s *Server) answerGateways(a GatewayAsker) error {
	err := a.Answer(topicClients, func([]byte) []byte {
		b, err := msgpack.Marshal(gatewayClients{Gateway: s.gatewayName(), Clients: s.clientInfos()})
		if err != nil { // a bug: ClientInfo always encodes
			s.log.Error("clients not encoded for another gateway", "err", err)
		}
		return b
	})
	if err != nil {
		return err
	}
	if err := a.Answer(topicDeleted, func(question []byte) []byte {
		var n deletedNotice
		if err := wire.Unmarshal(question, &n); err != nil || n.Queue == "" {
			s.log.Warn("another gateway's deletion of a queue not decoded", "err", err)
			return nil
		}
		s.deleted.add(n.Queue, n.At, n.Cancel)
		s.dropAwaiting(n.Queue)
		return []byte("ok")
	}); err != nil {
		return err
	}
	if err := a.Answer(topicUnfinished, func(question []byte) []byte {
		return strconv.AppendInt(nil, int64(s.py.Unfinished(string(question))), 10)
	}); err != nil {
		return err
	}
	return a.Answer(topicTakeDone, func(question []byte) []byte {
		return strconv.AppendBool(nil, s.py.TakeDone(string(question)))
	})
}

// gatewayName names this gateway to the others' clients: as configured,
// or its host and the port it serves clients on (the lowest, if it
// serves on several).
func (s *Server) gatewayName() string {
	if s.cfg.GatewayName != "" {
		return s.cfg.GatewayName
	}
	host := hostname()
	port := 0
	s.mu.Lock()
	for ln := range s.listeners {
		if a, ok := ln.Addr().(*net.TCPAddr); ok && (port == 0 || a.Port < port) {
			port = a.Port
		}
	}
	s.mu.Unlock()
	if port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// hostname is this machine's host name, looked up once.
var hostname = sync.OnceValue(func() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
})

// allClients returns the clients of every gateway of the cluster, each
// marked with its gateway, or of this server alone if it is no gateway.
// If the other gateways cannot be asked (this one's engine is out of
// reach), it returns this gateway's own, and a note saying why.
func (s *Server) allClients(ctx context.Context) (clients []wire.ClientInfo, note string) {
	if s.asker == nil {
		return s.clientInfos(), ""
	}
	ctx, cancel := context.WithTimeout(ctx, askFor)
	defer cancel()
	var all []wire.ClientInfo
	err := s.asker.Ask(ctx, topicClients, nil, func(_ string, b []byte) {
		var gc gatewayClients
		if err := wire.Unmarshal(b, &gc); err != nil {
			s.log.Warn("a gateway's clients not decoded", "err", err)
			return
		}
		for _, c := range gc.Clients {
			c.Gateway = gc.Gateway
			all = append(all, c)
		}
	})
	if err != nil {
		own := s.clientInfos()
		name := s.gatewayName()
		for i := range own {
			own[i].Gateway = name
		}
		return own, fmt.Sprintf("the clients of gateway %s alone: %v", name, err)
	}
	slices.SortFunc(all, func(a, b wire.ClientInfo) int {
		return cmp.Or(cmp.Compare(a.Gateway, b.Gateway), cmp.Compare(a.ID, b.ID))
	})
	return all, ""
}

// pyCluster is the cluster's other gateways, to Python's join and
// task_done (pymanager.Cluster).
type pyCluster struct{ s *Server }

// Unfinished sums, over every gateway of the cluster, the tasks of queue
// q its Python clients took and have not marked done.
func (c pyCluster) Unfinished(q string) (int, error) {
	ctx, cancel := context.WithTimeout(c.s.ctx, askFor)
	defer cancel()
	counts, err := c.unfinishedBy(ctx, q)
	sum := 0
	for _, n := range counts {
		sum += n
	}
	return sum, err
}

// TakeDone marks done a task of queue q that a Python client took through
// another gateway, at that gateway, and reports whether one had one.
func (c pyCluster) TakeDone(q string) (bool, error) {
	ctx, cancel := context.WithTimeout(c.s.ctx, askFor)
	defer cancel()
	counts, err := c.unfinishedBy(ctx, q)
	if err != nil {
		return false, err
	}
	own := c.s.asker.GatewayID()
	for g, n := range counts {
		if n <= 0 || g == own {
			continue
		}
		// One at a time: a gateway takes one only if it still has one.
		b, err := c.s.asker.AskGateway(ctx, topicTakeDone, g, []byte(q))
		if err != nil {
			return false, err
		}
		if taken, _ := strconv.ParseBool(string(b)); taken {
			return true, nil
		}
	}
	return false, nil
}

// unfinishedBy asks every gateway how many tasks of queue q its Python
// clients took and have not marked done, and returns the counts by
// gateway ID.
func (c pyCluster) unfinishedBy(ctx context.Context, q string) (map[string]int, error) {
	counts := make(map[string]int)
	var bad error
	err := c.s.asker.Ask(ctx, topicUnfinished, []byte(q), func(gateway string, b []byte) {
		n, err := strconv.Atoi(string(b))
		if err != nil {
			bad = fmt.Errorf("a gateway's count of unfinished tasks: %w", err)
			return
		}
		counts[gateway] = n
	})
	return counts, cmp.Or(err, bad)
}

// noteDeleted remembers that a client deleted queue name at at (with
// cancel, its tasks too), here and, in a cluster, at every gateway it
// reaches before the delete is answered, so that a worker of another
// gateway takes no cancelled task after it. A gateway it misses (down,
// or cut off) runs the tasks and stores their results, as before
// deletions were shared.
func (s *Server) noteDeleted(ctx context.Context, name string, at time.Time, cancel bool) {
	s.deleted.add(name, at, cancel)
	s.dropAwaiting(name)
	if s.asker == nil {
		return
	}
	question, err := msgpack.Marshal(deletedNotice{Queue: name, At: at, Cancel: cancel})
	if err != nil { // a bug: the notice always encodes
		s.log.Error("deletion not encoded for the other gateways", "err", err)
		return
	}
	ctx, stop := context.WithTimeout(ctx, askFor)
	defer stop()
	if err := s.asker.Ask(ctx, topicDeleted, question, func(string, []byte) {}); err != nil {
		s.log.Warn("the other gateways not told of a queue's deletion", "queue", name, "err", err)
	}
}
