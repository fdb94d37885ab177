package acl_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qm-dev/qm/acl"
)

const sample = `
[[key]]
name = "ingest"
secret = "s-ingest"
put = ["jobs", "jobs.*", "map-*"]
get = ["map-*"]
delete = ["map-*"]

[[key]]
name = "worker"
secret_file = "worker.key"
get = ["jobs"]

[[key]]
name = "ops"
secret = "s-ops"
admin = true
`

func TestParse(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "worker.key"), []byte("s-worker\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "acl.toml")
	if err := os.WriteFile(path, []byte(sample), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := acl.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Keys()); n != 3 {
		t.Fatalf("%d keys, want 3", n)
	}
	if got := string(r.Lookup("worker").Secret); got != "s-worker" {
		t.Errorf("worker secret %q, want s-worker (newline trimmed)", got)
	}
	if got := string(r.Secrets()[2]); got != "s-ops" {
		t.Errorf("secret 2 %q, want s-ops", got)
	}
	ingest, worker, ops := r.Lookup("ingest"), r.Lookup("worker"), r.Lookup("ops")
	for _, c := range []struct {
		key   *acl.Key
		perm  acl.Perm
		queue string
		want  bool
	}{
		{ingest, acl.Put, "jobs", true},
		{ingest, acl.Put, "jobs.a.b", true},
		{ingest, acl.Put, "jobsx", false},
		{ingest, acl.Get, "jobs", false},
		{worker, acl.Get, "jobs", true},
		{worker, acl.Put, "jobs", false},
		{ops, acl.Get, "jobs", false},
		{ingest, acl.Delete, "map-1", true},
		{ingest, acl.Delete, "jobs", false},
		{worker, acl.Delete, "jobs", false},
		{ops, acl.Delete, "jobs", true},
	} {
		if got := c.key.May(c.perm, c.queue); got != c.want {
			t.Errorf("%s may %d %s: %v, want %v", c.key.Name, c.perm, c.queue, got, c.want)
		}
	}
	err = ingest.Check(acl.Get, "payroll")
	if !errors.Is(err, acl.ErrDenied) || err.Error() != "permission denied: key ingest may not get from payroll" {
		t.Errorf("Check: %v", err)
	}
	if err := ingest.CheckAdmin("purge jobs"); err == nil || err.Error() != "permission denied: key ingest may not purge jobs" {
		t.Errorf("CheckAdmin: %v", err)
	}
	if err := ops.CheckAdmin("purge jobs"); err != nil {
		t.Errorf("CheckAdmin of an admin: %v", err)
	}
	if err := worker.Check(acl.Use, "jobs"); err != nil {
		t.Errorf("Check(Use) of a queue it may get from: %v", err)
	}
	if err := worker.Check(acl.Use, "payroll"); err == nil || err.Error() != "permission denied: key worker may not use payroll" {
		t.Errorf("Check(Use): %v", err)
	}
	if err := worker.Check(acl.Delete, "jobs"); err == nil || err.Error() != "permission denied: key worker may not delete jobs" {
		t.Errorf("Check(Delete): %v", err)
	}
	if r.Lookup("nobody") != nil {
		t.Error("Lookup of an unknown name")
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ name, file, want string }{
		{"syntax", "[[key]]\nname = \"a\"\nsecret = \"x\"\nput = [\"jobs\"\n", "line 4"},
		{"syntax line", "[[key]]\nname = \"a\"\nsecret = = \"x\"\n", "line 3"},
		{"empty", "", "no [[key]]"},
		{"unknown field", "[[key]]\nname = \"a\"\nsecret = \"x\"\nadmn = true\n", `unknown field "key.admn"`},
		{"no name", "[[key]]\nsecret = \"x\"\n", "[[key]] 1: no name"},
		{"bad name", "[[key]]\nname = \"a b\"\nsecret = \"x\"\n", "only letters"},
		{"no secret", "[[key]]\nname = \"a\"\n", "no secret"},
		{"both secrets", "[[key]]\nname = \"a\"\nsecret = \"x\"\nsecret_file = \"f\"\n", "not both"},
		{"missing secret file", "[[key]]\nname = \"a\"\nsecret_file = \"nope\"\n", "secret_file"},
		{"duplicate name", "[[key]]\nname = \"a\"\nsecret = \"x\"\n[[key]]\nname = \"a\"\nsecret = \"y\"\n", "used twice"},
		{"duplicate secret", "[[key]]\nname = \"a\"\nsecret = \"x\"\n[[key]]\nname = \"b\"\nsecret = \"x\"\n", "same secret"},
		{"empty pattern", "[[key]]\nname = \"a\"\nsecret = \"x\"\nget = [\"\"]\n", "empty pattern"},
		{"empty delete pattern", "[[key]]\nname = \"a\"\nsecret = \"x\"\ndelete = [\"\"]\n", "empty pattern"},
		{"wrong type", "[[key]]\nname = \"a\"\nsecret = \"x\"\nadmin = \"yes\"\n", "line 4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := acl.Parse([]byte(c.file), t.TempDir())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse: %v, want an error with %q", err, c.want)
			}
		})
	}
}

func TestSingle(t *testing.T) {
	r := acl.Single([]byte("k"))
	k := r.Lookup(acl.SingleKeyName)
	if k == nil || !k.Admin || !k.May(acl.Put, "any/queue") || !k.May(acl.Get, "x.dead") {
		t.Fatalf("Single's key may not do everything: %+v", k)
	}
}

// FuzzParse: no file makes Parse panic, and rules it accepts have named
// keys with secrets.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("[[key]]\nname = \"a\"\nsecret = \"x\"\nput = [\"*\"]\nadmin = true\n"))
	f.Add([]byte("[key]\nname = 1\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := acl.Parse(data, dir)
		if err != nil {
			return
		}
		for _, k := range r.Keys() {
			if k.Name == "" || len(k.Secret) == 0 || r.Lookup(k.Name) != k {
				t.Fatalf("accepted a bad key %+v", k)
			}
		}
	})
}
