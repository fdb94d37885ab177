// Package pymanager serves the clients of Python's
// multiprocessing.managers.BaseManager: unmodified scripts that register
// get_<name>_queue and call put, get, qsize, task_done and join on the
// proxies, over the connection the master has authenticated.
//
// It knows the master only through [Backend] (the queues, and whether
// the master takes work) and each connection only through [Client], as
// package httpapi knows the master through its Backend. A request is
// decoded here (pyproto.DecodeRequest, in [Server.Serve]'s loop), mapped
// to a queue call (calls.go), and answered with a pickled reply. Where a
// Python client's put goes is decided in one place, results.go.
package pymanager
