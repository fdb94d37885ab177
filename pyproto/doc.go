// Package pyproto speaks the parts of Python's multiprocessing.managers
// protocol that the classic distributed-queue pattern uses: requests and
// replies carried as pickles, and the conversion of their values to and
// from the msgpack payloads qm queues hold.
//
// Unpickle is a restricted decoder for plain data only: None, bool, int
// (of any size), float, complex, str, bytes, bytearray, tuple, list, dict,
// set, frozenset, decimal.Decimal, and datetime's datetime, date, time
// and timedelta (aware ones with a datetime.timezone, a fixed offset). It
// never imports, looks up or calls anything. The few globals Python's
// pickler names for these types (builtins.set, datetime.datetime,
// _codecs.encode...) are an allowlist, reduce.go: a REDUCE of one is
// read as data, its arguments checked against the shape Python writes,
// and the value built from them in Go. Any other global, and every
// opcode that would apply or build anything else (BUILD, INST, OBJ,
// NEWOBJ, EXT, PERSID...), is refused with ErrUnsafePickle before any of
// it is acted on. The encoder writes replies, including the few exception
// instances a manager returns (queue.Empty, queue.Full, ValueError), with
// the same globals plus REDUCE, which the Python client unpickles.
//
// The types msgpack has no form for travel as the extension types of
// package internal/pyext, which wire decodes for Go clients; the table is
// docs/VALUES.md.
//
// The msgpack side is read and written with internal/msgp, by its rules
// for bounds; the conversions recurse, and stop at MaxDepth.
//
// ReadMessage and WriteMessage are the framing of
// multiprocessing.connection, which both the authentication handshake
// (package auth) and every request after it use.
//
// The package knows nothing of queues or connections; package
// master/pymanager serves the protocol with it.
package pyproto
