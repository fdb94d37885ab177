package msgp

// Fields reads a map whose keys are strings one entry at a time, as the
// decoder of a message (a struct encoded as a map) does:
//
//	f := r.Fields()
//	for {
//		key, ok := f.Next(r)
//		if !ok {
//			return f.Err()
//		}
//		var err error
//		switch string(key) { // compared without allocating
//		case "id":
//			m.ID, err = r.Uint()
//		default:
//			err = r.Skip()
//		}
//		if err != nil {
//			return err
//		}
//	}
//
// It lives on the caller's stack and the keys are slices of the input, so
// reading a message allocates nothing of its own. (It is given the Reader
// at each Next rather than holding it: a Reader it held would escape with
// the error Err returns, costing an allocation per message.)
type Fields struct {
	n   int // entries left
	err error
}

// Fields starts reading the map at r; nil reads as an empty map.
func (r *Reader) Fields() Fields {
	n, err := r.MapHeader()
	return Fields{n: n, err: err}
}

// Next reads the next key from r, the Reader Fields was called on (a str
// or a bin; nil reads as empty), after which the caller reads or skips
// its value. It returns false at the end of the map or on an error,
// which Err then returns.
func (f *Fields) Next(r *Reader) (key []byte, ok bool) {
	if f.err != nil || f.n == 0 {
		return nil, false
	}
	f.n--
	key, f.err = r.StrBytes()
	return key, f.err == nil
}

// Err returns the error that ended Next early, if one did.
func (f *Fields) Err() error { return f.err }
