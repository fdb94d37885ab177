// Package acl reads the master's access-control file and answers "may key
// K do this to queue Q". It knows nothing of the network: the handshake
// (package auth) tells which key a client proved, and the master asks
// that key's Check before each call.
//
// The file is TOML, a list of keys:
//
//	[[key]]
//	name = "ingest"                     # in logs, /metrics and the client list
//	secret_file = "/etc/qm/ingest.key"  # or secret = "..."
//	put = ["jobs", "jobs.*"]            # queue patterns it may put to
//	get = []                            # queue patterns it may get, ack, nack, extend and complete from
//	delete = []                         # queue patterns it may delete (as admin may any), e.g. ["map-*"]
//	admin = false                       # inspect, clients, peek, pause, resume, purge, requeue, drop, delete
//
// A pattern is a queue name in which '*' stands for any run of
// characters, '/' and '.' included, so "jobs.*" matches "jobs.a" and
// "jobs.a.b" but not "jobs", and "*" matches every queue. No other
// character is special.
package acl
