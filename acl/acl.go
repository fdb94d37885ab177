package acl

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// Perm is a kind of access to a queue.
type Perm uint8

const (
	// Put is putting tasks to a queue.
	Put Perm = iota + 1
	// Get is getting tasks from a queue and settling them: ack, nack,
	// extend, complete.
	Get
	// Use is either, or admin: what asking a queue's length needs.
	Use
	// Delete is deleting a queue, with the tasks that reply to it if
	// asked: granted by admin, or by the key's delete patterns (a
	// producer's map deletes its private reply queue at its end).
	Delete
)

// Key is one entry of the file: a secret and what its holder may do.
// A Key is not modified once its Rules are made.
type Key struct {
	// Name names the key in logs, metrics, the client list and errors.
	Name string
	// Secret is what the client proves it knows in the handshake.
	Secret []byte
	// PutPatterns and GetPatterns are the queues it may put to and get
	// from, and DeletePatterns those it may delete without admin (see
	// the package doc for the syntax).
	PutPatterns, GetPatterns, DeletePatterns []string
	// Admin allows the operators' calls: inspect, clients, peek, pause,
	// resume, purge, requeue, drop, delete.
	Admin bool
}

// May reports whether k may do p to queue.
func (k *Key) May(p Perm, queue string) bool {
	switch p {
	case Put:
		return matchAny(k.PutPatterns, queue)
	case Get:
		return matchAny(k.GetPatterns, queue)
	case Use:
		return k.Admin || matchAny(k.PutPatterns, queue) || matchAny(k.GetPatterns, queue)
	case Delete:
		return k.Admin || matchAny(k.DeletePatterns, queue)
	}
	return false
}

// Check returns a *DeniedError if k may not do p to queue, else nil.
func (k *Key) Check(p Perm, queue string) error {
	if k.May(p, queue) {
		return nil
	}
	action := "put to " + queue
	switch p {
	case Get:
		action = "get from " + queue
	case Use:
		action = "use " + queue
	case Delete:
		action = "delete " + queue
	}
	return &DeniedError{Key: k.Name, Action: action}
}

// CheckAdmin returns a *DeniedError if k is not an admin key, else nil;
// action names the call, as in "purge payroll".
func (k *Key) CheckAdmin(action string) error {
	if k.Admin {
		return nil
	}
	return &DeniedError{Key: k.Name, Action: action}
}

// Rules are the keys of one reading of the file, in its order.
type Rules struct {
	keys    []*Key
	byName  map[string]*Key
	secrets [][]byte // secrets[i] is keys[i].Secret
}

// Keys returns the keys in the file's order; do not modify them.
func (r *Rules) Keys() []*Key { return r.keys }

// Lookup returns the key named name, or nil.
func (r *Rules) Lookup(name string) *Key { return r.byName[name] }

// Secrets returns the keys' secrets, secret i being Keys()[i]'s; do not
// modify them. The handshake takes them as they are, allocating nothing.
func (r *Rules) Secrets() [][]byte { return r.secrets }

// SingleKeyName names the one key of Single.
const SingleKeyName = "authkey"

// Single returns the rules of a master started with one authkey: one
// key, named SingleKeyName, that may do everything.
func Single(secret []byte) *Rules {
	k := &Key{Name: SingleKeyName, Secret: secret, PutPatterns: []string{"*"}, GetPatterns: []string{"*"}, Admin: true}
	return &Rules{keys: []*Key{k}, byName: map[string]*Key{k.Name: k}, secrets: [][]byte{secret}}
}

// maxNameLen bounds a key's name, which labels metrics.
const maxNameLen = 64

// entry is a [[key]] as written.
type entry struct {
	Name       string   `toml:"name"`
	Secret     string   `toml:"secret"`
	SecretFile string   `toml:"secret_file"`
	Put        []string `toml:"put"`
	Get        []string `toml:"get"`
	Delete     []string `toml:"delete"`
	Admin      bool     `toml:"admin"`
}

type file struct {
	Key []entry `toml:"key"`
}

// Load reads and checks the file at path. A secret_file that is not
// absolute is taken from path's directory.
func Load(path string) (*Rules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read acl: %w", err)
	}
	r, err := Parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("acl %s: %w", path, err)
	}
	return r, nil
}

// Parse reads and checks a file's contents, reading each secret_file
// relative to dir. A syntax error names its line; an entry that is
// wrong names the entry.
func Parse(data []byte, dir string) (*Rules, error) {
	var f file
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return nil, err
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return nil, fmt.Errorf("unknown field %q (fields: name, secret, secret_file, put, get, delete, admin)", undec[0].String())
	}
	if len(f.Key) == 0 {
		return nil, errors.New("no [[key]] entries")
	}
	r := &Rules{byName: make(map[string]*Key, len(f.Key))}
	for i, e := range f.Key {
		k, err := e.key(dir)
		if err != nil {
			if e.Name != "" {
				return nil, fmt.Errorf("[[key]] %d (%q): %w", i+1, e.Name, err)
			}
			return nil, fmt.Errorf("[[key]] %d: %w", i+1, err)
		}
		if r.byName[k.Name] != nil {
			return nil, fmt.Errorf("[[key]] %d: name %q is used twice", i+1, k.Name)
		}
		for _, o := range r.keys {
			// The handshake names the key by its secret.
			if bytes.Equal(o.Secret, k.Secret) {
				return nil, fmt.Errorf("[[key]] %d (%q): same secret as key %q", i+1, k.Name, o.Name)
			}
		}
		r.keys = append(r.keys, k)
		r.byName[k.Name] = k
		r.secrets = append(r.secrets, k.Secret)
	}
	return r, nil
}

func (e *entry) key(dir string) (*Key, error) {
	if err := checkName(e.Name); err != nil {
		return nil, err
	}
	var secret []byte
	switch {
	case e.Secret != "" && e.SecretFile != "":
		return nil, errors.New("give secret or secret_file, not both")
	case e.Secret != "":
		secret = []byte(e.Secret)
	case e.SecretFile != "":
		path := e.SecretFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("secret_file: %w", err)
		}
		// As auth.LoadKey: the newline an editor adds is not the key's.
		secret = bytes.TrimRight(b, "\r\n")
		if len(secret) == 0 {
			return nil, fmt.Errorf("secret_file %s is empty", path)
		}
	default:
		return nil, errors.New("no secret or secret_file")
	}
	for _, list := range [][]string{e.Put, e.Get, e.Delete} {
		for _, p := range list {
			if err := checkPattern(p); err != nil {
				return nil, fmt.Errorf("pattern %q: %w", p, err)
			}
		}
	}
	return &Key{Name: e.Name, Secret: secret, PutPatterns: e.Put, GetPatterns: e.Get, DeletePatterns: e.Delete, Admin: e.Admin}, nil
}

// checkName admits names safe in logs and metric labels.
func checkName(name string) error {
	if name == "" {
		return errors.New("no name")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	}
	if i := strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}); i >= 0 {
		return fmt.Errorf("name %q: only letters, digits, '-', '_' and '.' are allowed", name)
	}
	return nil
}
