package acl

import (
	"errors"
	"fmt"
)

// ErrDenied is matched (errors.Is) by every *DeniedError.
var ErrDenied = errors.New("permission denied")

// DeniedError is a call outside its key's permissions.
type DeniedError struct {
	// Key is the name of the key the client proved.
	Key string
	// Action says what was refused, as in "get from payroll".
	Action string
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("%v: key %s may not %s", ErrDenied, e.Key, e.Action)
}

// Is reports whether target is ErrDenied.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }
