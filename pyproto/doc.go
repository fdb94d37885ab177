// Package pyproto speaks the parts of Python's multiprocessing.managers
// protocol that the classic distributed-queue pattern uses: requests and
// replies carried as pickles, and the conversion of their values to and
// from the msgpack payloads qm queues hold.
//
// Unpickle is a restricted decoder for plain data only: None, bool, int
// (64 bits), float, str, bytes, tuple, list and dict. It never imports,
// looks up or calls anything: a pickle that names a global or applies a
// callable (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, EXT,
// PERSID...) is refused with ErrUnsafePickle before any of it is acted on.
// The encoder writes replies, including the few exception instances a
// manager returns (queue.Empty, queue.Full, ValueError) as a global plus
// REDUCE, which the Python client unpickles.
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
