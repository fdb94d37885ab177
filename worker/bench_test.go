package worker_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkWorkerEcho puts b.N 16-byte tasks through a master on loopback
// and two workers running the echo built-in at concurrency 32, all in this
// process, and collects every result: ns/op and allocs/op are per task,
// for master, workers and producer together.
func BenchmarkWorkerEcho(b *testing.B) { benchEcho(b, 32) }

// BenchmarkWorkerEchoConcurrency1 is BenchmarkWorkerEcho with the workers
// at their default concurrency, 1, where the prefetch does the batching.
func BenchmarkWorkerEchoConcurrency1(b *testing.B) { benchEcho(b, 1) }

func benchEcho(b *testing.B, concurrency int) {
	addr, _ := qmtest.StartMaster(b, master.Config{})
	echo, err := worker.Builtin("echo")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var done []chan error
	for range 2 {
		ch := make(chan error, 1)
		done = append(done, ch)
		go func() {
			ch <- worker.Run(ctx, worker.Config{
				Server: addr, Authkey: qmtest.Authkey, Name: "bench", Handler: echo,
				Concurrency: concurrency, GetTimeout: time.Second,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
		}()
	}
	defer func() {
		cancel()
		for _, ch := range done {
			if err := <-ch; err != nil {
				b.Error(err)
			}
		}
	}()
	c := qmtest.Dial(b, addr, "producer")
	payload, err := msgpack.Marshal(make([]byte, 14)) // 16 bytes encoded
	if err != nil {
		b.Fatal(err)
	}
	items := make([]msgpack.RawMessage, 1000)
	for i := range items {
		items[i] = payload
	}

	b.ReportAllocs()
	b.ResetTimer()
	putErr := make(chan error, 1)
	go func() {
		for sent := 0; sent < b.N; {
			k := min(len(items), b.N-sent)
			if _, err := c.PutRaw(ctx, "tasks", items[:k], wire.PutOptions{ReplyTo: "results"}); err != nil {
				putErr <- err
				return
			}
			sent += k
		}
		putErr <- nil
	}()
	for got := 0; got < b.N; {
		ts, err := c.Get(ctx, "results", wire.GetOptions{Max: 1000, Timeout: 10 * time.Second, NoAck: true})
		if err != nil {
			b.Fatal(err)
		}
		if len(ts) == 0 {
			b.Fatalf("no result within 10s; %d of %d", got, b.N)
		}
		got += len(ts)
	}
	b.StopTimer()
	if err := <-putErr; err != nil {
		b.Fatal(err)
	}
}
