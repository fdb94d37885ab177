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
// and Trouble repeat it while the lines keep coming, or, for a name twice,
// until the node is restarted. A line worded otherwise (another
// nats-server version) is passed on as before.

// troubleFresh is how long a reason stands after nats-server last said
// it: it tries each route again every second.
const troubleFresh = 10 * time.Second

var (
	// routeLine is a line about a route connection: nats-server starts
	// them with the remote address and the route's id.
	routeLine = regexp.MustCompile(`^(\S+) - rid:\d+ - (.*)$`)
	dupName   = regexp.MustCompile(`duplicate name: "(.*)"`)
)

// trouble is a reason nodes of the cluster cannot connect: when
// nats-server last gave it, and whether it stands until the node is
// restarted.
type trouble struct {
	at     time.Time
	sticky bool
}

// stands reports whether t stands at now.
func (t trouble) stands(now time.Time) bool { return t.sticky || now.Sub(t.at) <= troubleFresh }

// peerTrouble says why line, an error nats-server logged, means that
// nodes of the cluster cannot connect, or "". remote is the address of
// the route connection the line is about, "" if it is about none.
// sticky says the reason stands until the node is restarted: a name
// twice, whose route nats-server refuses once and does not try again
// (its cluster has two nodes of one identity, neither fit to count on).
func peerTrouble(line string) (why, remote string, sticky bool) {
	m := routeLine.FindStringSubmatch(line)
	if m == nil {
		return "", "", false
	}
	remote, msg := m[1], m[2]
	if strings.Contains(msg, "Authorization Violation") {
		// The peer's answer to this node's route; nodes take routes
		// only with the secret of their authkey.
		return fmt.Sprintf("cluster peer %s refused this node's route: the nodes' keys differ (--authkey, or --cluster-key-file)", remote), remote, false
	}
	if d := dupName.FindStringSubmatch(msg); d != nil {
		return fmt.Sprintf("another node of the cluster is named %s: every node's name must differ (qmaster --node-name); "+
			"restart the one misnamed under a name of its own, then this one: this stands until it is restarted", d[1]), remote, true
	}
	return "", remote, false
}

// explained passes on line, an error of nats-server, if it says why nodes
// of the cluster cannot connect: the reason once at error level (again
// only after troubleFresh without it), the line itself at debug level.
// While a reason stands, nats-server's other errors about the same
// route connection follow from it, and go to debug level too. It
// reports whether it passed the line on.
func (l *natsLog) explained(line string) bool {
	why, remote, sticky := peerTrouble(line)
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
		l.troubles = make(map[string]trouble)
		l.troubledRoutes = make(map[string]time.Time)
	}
	last, seen := l.troubles[why]
	l.troubles[why], l.troubledRoutes[remote] = trouble{at: now, sticky: sticky}, now
	l.mu.Unlock()
	if !seen || now.Sub(last.at) > troubleFresh {
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
		l.log.Error(fmt.Sprintf("a connection from %s was refused: its key differs from this node's (a node started with another --authkey or --cluster-key-file?)", host))
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
	for why, t := range l.troubles {
		if !t.stands(now) {
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
// routes: the nodes' keys differ), or since the node started
// (another node with this one's name), or nil. While it lasts the
// cluster may not form, or form without this node.
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
