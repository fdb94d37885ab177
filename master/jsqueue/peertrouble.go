package jsqueue

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"
)

// A node set up unlike its peers never joins its cluster: with another
// authkey its peers refuse its routes, and with another node's name
// (NodeConfig.Name) the other node refuses them. nats-server says so
// only in its own words, on every attempt (each second), and the node's
// gateway just waited for JetStream. natsLog recognises those lines
// (peerTrouble) and says why once, in qm's words; WaitReady's warnings
// and Trouble repeat it while the lines keep coming. A line worded
// otherwise (another nats-server version) is passed on as before.

// troubleFresh is how long a reason stands after nats-server last said
// it: it tries each route again every second.
const troubleFresh = 10 * time.Second

var (
	// routeLine is a line about a route connection: nats-server starts
	// them with the remote address and the route's id.
	routeLine = regexp.MustCompile(`^(\S+) - rid:\d+ - (.*)$`)
	dupName   = regexp.MustCompile(`duplicate name: "(.*)"`)
)

// peerTrouble says why line, an error nats-server logged, means that
// nodes of the cluster cannot connect, or "". remote is the address of
// the route connection the line is about, "" if it is about none.
func peerTrouble(line string) (why, remote string) {
	m := routeLine.FindStringSubmatch(line)
	if m == nil {
		return "", ""
	}
	remote, msg := m[1], m[2]
	if strings.Contains(msg, "Authorization Violation") {
		// The peer's answer to this node's route; nodes take routes
		// only with the secret of their authkey.
		return fmt.Sprintf("cluster peer %s refused this node's route: the nodes' authkeys differ", remote), remote
	}
	if d := dupName.FindStringSubmatch(msg); d != nil {
		return duplicateName + d[1] + ": every node's name must differ (qmaster --node-name)", remote
	}
	return "", remote
}

// duplicateName starts the reason of a node whose name another node
// has. nats-server refuses that route once and does not try it again, so
// the reason stands until the node is restarted: its cluster has two
// nodes of one identity, and neither is fit to count on.
const duplicateName = "another node of the cluster is named "

// stands reports whether reason why, last given at, stands at now.
func stands(why string, at, now time.Time) bool {
	return now.Sub(at) <= troubleFresh || strings.HasPrefix(why, duplicateName)
}

// explained passes on line, an error of nats-server, if it says why nodes
// of the cluster cannot connect: the reason once at error level (again
// only after troubleFresh without it), the line itself at debug level.
// While a reason stands, nats-server's other errors about the same
// route connection follow from it, and go to debug level too. It
// reports whether it passed the line on.
func (l *natsLog) explained(line string) bool {
	why, remote := peerTrouble(line)
	if remote == "" {
		return false
	}
	now := time.Now()
	if why == "" && strings.Contains(line, "authentication error") {
		l.refusedNode(remote, line, now)
		return true
	}
	l.mu.Lock()
	if why == "" {
		follows := now.Sub(l.troubledRoutes[remote]) <= troubleFresh
		l.mu.Unlock()
		if follows {
			l.log.Debug("nats: " + line)
		}
		return follows
	}
	if l.troubles == nil {
		l.troubles = make(map[string]time.Time)
		l.troubledRoutes = make(map[string]time.Time)
	}
	last, seen := l.troubles[why]
	l.troubles[why], l.troubledRoutes[remote] = now, now
	l.mu.Unlock()
	if !seen || now.Sub(last) > troubleFresh {
		l.log.Error(why)
	}
	l.log.Debug("nats: " + line)
	return true
}

// refusedNode passes on line, nats-server's refusal of a connection from
// remote whose credentials it did not take: most likely a node started
// with another authkey. Its peers' routes each come from a port of their
// own, so it is said once every repeatEvery for each host, in qm's words.
// It is no trouble of this node's (Trouble): the refused node has one.
func (l *natsLog) refusedNode(remote, line string, now time.Time) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	key := "refused " + host
	l.mu.Lock()
	if l.last == nil {
		l.last = make(map[string]time.Time)
	}
	say := now.Sub(l.last[key]) >= repeatEvery
	if say {
		l.last[key] = now
	}
	l.mu.Unlock()
	if say {
		l.log.Error(fmt.Sprintf("a connection from %s was refused: its authkey differs from this node's (a node started with another --authkey?)", host))
	}
	l.log.Debug("nats: " + line)
}

// fresh returns the reasons nats-server gave within troubleFresh,
// sorted, and forgets the others. l.mu is held.
func (l *natsLog) fresh(now time.Time) []string {
	for r, at := range l.troubledRoutes {
		if now.Sub(at) > troubleFresh {
			delete(l.troubledRoutes, r)
		}
	}
	var whys []string
	for why, at := range l.troubles {
		if !stands(why, at, now) {
			delete(l.troubles, why)
			continue
		}
		whys = append(whys, why)
	}
	slices.Sort(whys)
	return whys
}

// Trouble returns why nodes of the node's cluster cannot connect, as
// nats-server said in the last few seconds (a peer refusing this node's
// routes: the nodes' authkeys differ; another node with this one's
// name), or nil. While it lasts the cluster may not form, or form
// without this node.
func (n *Node) Trouble() error {
	l := n.natsLog
	l.mu.Lock()
	whys := l.fresh(time.Now())
	l.mu.Unlock()
	if len(whys) == 0 {
		return nil
	}
	return errors.New(strings.Join(whys, "; "))
}
