// Package wire is qm's native protocol: the messages a client and the
// master exchange, how they are framed and encoded, and the Go client.
//
// After authentication (package auth) a native client sends a preamble
// (preamble.go), then runs a yamux session over the connection; each call
// is one request and one response on a stream. A message is a
// length-prefixed frame (frame.go, Codec) holding msgpack: message.go
// defines Request, Response, Task and Completion and their ops, and
// fastcodec.go encodes and decodes them without reflection; admin.go
// holds the operators' messages. A task's payload and a result are
// msgpack values (value.go, result.go; docs/VALUES.md), so Python and Go
// clients read each other's. errors.go maps the master's errors to codes
// and back to Go errors (ErrNotLeased, ErrUnavailable, ...).
//
// Client (client.go) dials a master (Config.Addr may list several, or a
// name with several addresses: it tries them from a random one), and
// offers the calls: Put, Get, Complete, Extend and the admin ones. coalesce.go joins each yamux frame's header and body into one
// write, and counts what was written (SendLedger). defaults.go holds the
// limits and queue names both sides share.
package wire
