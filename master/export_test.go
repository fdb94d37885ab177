package master

// KnowsDeletion reports whether s remembers the deletion of queue name.
func (s *Server) KnowsDeletion(name string) bool {
	_, ok := s.deleted.lookup(name)
	return ok
}
