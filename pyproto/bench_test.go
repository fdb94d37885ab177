package pyproto_test

import (
	"testing"

	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// benchPayload is a task payload of the usual shape: a map of a few
// scalars, a string and a short list.
func benchPayload(b *testing.B) []byte {
	p, err := wire.Encode(map[string]any{
		"id": 12345, "name": "resize", "path": "/data/images/0001.jpg", "scale": 0.5,
		"sizes": []any{64, 128, 256, 512}, "force": true, "owner": nil,
	})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkMsgpackToPickle is the master giving a task payload to a Python
// client.
func BenchmarkMsgpackToPickle(b *testing.B) {
	p := pyproto.Msgpack(benchPayload(b))
	for b.Loop() {
		if _, err := pyproto.Reply(pyproto.KindReturn, p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkToMsgpack is the master taking a Python client's put.
func BenchmarkToMsgpack(b *testing.B) {
	pickled, err := pyproto.Pickle(pyproto.Msgpack(benchPayload(b)))
	if err != nil {
		b.Fatal(err)
	}
	v, err := pyproto.Unpickle(pickled)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := pyproto.ToMsgpack(v, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapFields is the master looking for a result's shape in a
// payload it gives to Python.
func BenchmarkMapFields(b *testing.B) {
	r, err := wire.Encode(wire.Result{TaskID: 7, Worker: "host:1", Attempt: 1, Value: benchPayload(b)})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, ok := pyproto.MapFields(r); !ok {
			b.Fatal("not a map of string keys")
		}
	}
}
