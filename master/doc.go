// Package master serves named queues to authenticated clients over TCP.
//
// A Server (server.go) owns every goroutine it starts (goRun), the
// listeners and the connections, and stops them with Shutdown or Close.
// Each connection (conn.go) runs the handshake, then either a yamux
// session whose streams each carry calls, decoded with package wire and
// answered by handle.go, or, for a Python BaseManager client, package
// pymanager (python.go adapts the two). The calls reach the queues
// through the Queues interface (queues.go), which package queue's Manager
// implements, and the optional interfaces beside it that some queues
// implement (package jsqueue's, a cluster's, implements them all).
// config.go holds the Config, limits.go the resource limits, acl.go the
// per-key permissions (and the ending of waiting gets a reload denies),
// deleted.go the deletions of queues remembered, gateways.go what the
// gateways of a cluster tell each other, metrics.go the Prometheus
// metrics, admin.go and adminhttp.go the operators' actions and their
// HTTP endpoints (package httpapi), and util.go small helpers.
package master
