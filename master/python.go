package master

// servePython serves a client that speaks Python's BaseManager protocol.
// first holds the 4-byte length header of its first frame.
func (c *clientConn) servePython(first []byte) {
	c.s.log.Warn("not a qm client: Python manager clients are not supported yet", "remote", c.addr)
}
