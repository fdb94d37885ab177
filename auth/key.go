package auth

import (
	"bytes"
	"errors"
	"fmt"
	"os"
)

// KeyEnv is the environment variable that LoadKey reads last.
const KeyEnv = "QM_AUTHKEY"

// LoadKey returns the authkey from, in order: flagValue if non-empty, the file
// at path if non-empty (trailing newlines trimmed; a file left empty is an
// error), else the QM_AUTHKEY environment variable read through getenv
// (os.Getenv if nil). It returns nil, nil if none is set. Setting both
// flagValue and path is an error, since silently preferring one would hide a
// mistake.
func LoadKey(flagValue, path string, getenv func(string) string) ([]byte, error) {
	switch {
	case flagValue != "" && path != "":
		return nil, errors.New("authkey given both directly and as a file: use one")
	case flagValue != "":
		return []byte(flagValue), nil
	case path != "":
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read authkey file: %w", err)
		}
		// Editors and `echo key > file` end the file with a newline that is
		// not part of the key.
		b = bytes.TrimRight(b, "\r\n")
		if len(b) == 0 {
			return nil, fmt.Errorf("authkey file %s is empty", path)
		}
		return b, nil
	}
	if getenv == nil {
		getenv = os.Getenv
	}
	if v := getenv(KeyEnv); v != "" {
		return []byte(v), nil
	}
	return nil, nil
}
