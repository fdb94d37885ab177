package master

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
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
	// Ask asks every gateway, this one included, and returns their
	// answers.
	Ask(ctx context.Context, topic string, question []byte) ([][]byte, error)
}

// The topics the gateways of a cluster ask each other about.
const (
	topicClients    = "clients"
	topicUnfinished = "python-unfinished"
)

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
	return a.Answer(topicUnfinished, func(question []byte) []byte {
		return strconv.AppendInt(nil, int64(s.py.Unfinished(string(question))), 10)
	})
}

// gatewayName names this gateway to the others' clients: as configured,
// or its host and the port it serves clients on.
func (s *Server) gatewayName() string {
	if s.cfg.GatewayName != "" {
		return s.cfg.GatewayName
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln := range s.listeners {
		if a, ok := ln.Addr().(*net.TCPAddr); ok {
			return net.JoinHostPort(host, strconv.Itoa(a.Port))
		}
	}
	return host
}

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
	answers, err := s.asker.Ask(ctx, topicClients, nil)
	if err != nil {
		own := s.clientInfos()
		name := s.gatewayName()
		for i := range own {
			own[i].Gateway = name
		}
		return own, fmt.Sprintf("the clients of gateway %s alone: the other gateways could not be asked (%v)", name, err)
	}
	var all []wire.ClientInfo
	for _, b := range answers {
		var gc gatewayClients
		if err := msgpack.Unmarshal(b, &gc); err != nil {
			s.log.Warn("a gateway's clients not decoded", "err", err)
			continue
		}
		for _, c := range gc.Clients {
			c.Gateway = gc.Gateway
			all = append(all, c)
		}
	}
	slices.SortFunc(all, func(a, b wire.ClientInfo) int {
		return cmp.Or(cmp.Compare(a.Gateway, b.Gateway), cmp.Compare(a.ID, b.ID))
	})
	return all, ""
}

// unfinishedEverywhere sums, over every gateway of the cluster, the
// tasks of queue q its Python clients took and have not marked done
// (pymanager.Config.Unfinished).
func (s *Server) unfinishedEverywhere(q string) (int, error) {
	ctx, cancel := context.WithTimeout(s.ctx, askFor)
	defer cancel()
	answers, err := s.asker.Ask(ctx, topicUnfinished, []byte(q))
	if err != nil {
		return 0, err
	}
	sum := 0
	for _, b := range answers {
		n, err := strconv.Atoi(string(b))
		if err != nil {
			return 0, fmt.Errorf("a gateway's count of unfinished tasks: %w", err)
		}
		sum += n
	}
	return sum, nil
}
