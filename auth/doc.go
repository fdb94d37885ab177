// Package auth implements the mutual HMAC challenge-response handshake of
// Python's multiprocessing.connection, run on a raw net.Conn before anything
// else is spoken on it.
//
// Each side proves that it knows the shared authkey without sending it: the
// listening side (Server) challenges first, then answers the connecting
// side's (Client) challenge. Every message is a multiprocessing.connection
// frame (pyproto.WriteMessage and pyproto.ReadMessage), so unmodified
// Python clients and servers interoperate with qm.
//
// The package never logs and never puts the authkey in an error.
package auth
