package seglog_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
	bolt "go.etcd.io/bbolt"
)

var benchPayloads = []struct {
	name string
	b    []byte
}{
	{"16B", []byte("0123456789abcdef")},
	{"4KiB", []byte(strings.Repeat("x", 4096))},
}

// BenchmarkDurablePut is puts/s through a queue.Manager: in memory, and
// over a segment log with fsync always and every 100ms; 1 and 8
// producers putting one task per call, while one consumer drains the
// queue with no-ack gets (so memory stays bounded).
func BenchmarkDurablePut(b *testing.B) {
	modes := []struct {
		name  string
		store bool
		fsync seglog.FsyncMode
	}{
		{"memory", false, 0},
		{"always", true, seglog.FsyncAlways},
		{"interval", true, seglog.FsyncInterval},
	}
	for _, mode := range modes {
		for _, pl := range benchPayloads {
			for _, producers := range []int{1, 8} {
				b.Run(fmt.Sprintf("%s/%s/p%d", mode.name, pl.name, producers), func(b *testing.B) {
					cfg := queue.Config{}
					if mode.store {
						st, err := seglog.Open(b.TempDir(), seglog.Options{Fsync: mode.fsync})
						if err != nil {
							b.Fatal(err)
						}
						defer st.Close()
						cfg.Store = st
					}
					m, err := queue.New(cfg)
					if err != nil {
						b.Fatal(err)
					}
					defer m.Close()
					benchPuts(b, m, pl.b, producers)
				})
			}
		}
	}
}

func benchPuts(b *testing.B, m *queue.Manager, payload []byte, producers int) {
	ctx, cancel := context.WithCancel(context.Background())
	var drain sync.WaitGroup
	drain.Go(func() {
		for ctx.Err() == nil {
			m.Get(ctx, queue.GetRequest{Queue: "bench", Max: 512, Owner: 1, NoAck: true}, nil)
		}
	})
	its := []queue.Item{{Payload: payload}}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + producers - 1) / producers
	for range producers {
		wg.Go(func() {
			for range per {
				if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "bench", Items: its}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(per*producers)/b.Elapsed().Seconds(), "puts/s")
	cancel()
	drain.Wait()
}

// BenchmarkStoreAppend compares the candidate stores alone: one Add made
// durable (fsynced) per call, from 1 and 8 goroutines. seglog shares an
// fsync among concurrent appends; bbolt shares one among calls of
// DB.Batch, its group commit.
func BenchmarkStoreAppend(b *testing.B) {
	for _, pl := range benchPayloads {
		for _, producers := range []int{1, 8} {
			b.Run(fmt.Sprintf("seglog/%s/p%d", pl.name, producers), func(b *testing.B) {
				st, err := seglog.Open(b.TempDir(), seglog.Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				if _, _, err := st.Load(); err != nil {
					b.Fatal(err)
				}
				runProducers(b, producers, func(id uint64) error {
					return st.Wait(st.Append(store.Op{Kind: store.Add, Task: store.Task{ID: id, Queue: "bench", Seq: int64(id), Payload: pl.b, Enqueued: time.Now()}}))
				})
			})
			b.Run(fmt.Sprintf("bbolt/%s/p%d", pl.name, producers), func(b *testing.B) {
				db := openBolt(b, b.TempDir())
				runProducers(b, producers, func(id uint64) error {
					return db.Batch(func(tx *bolt.Tx) error {
						return tx.Bucket(boltBucket).Put(boltKey(id), pl.b)
					})
				})
			})
		}
	}
}

func runProducers(b *testing.B, producers int, put func(id uint64) error) {
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + producers - 1) / producers
	for p := range producers {
		wg.Go(func() {
			for i := range per {
				if err := put(uint64(p*per + i + 1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(per*producers)/b.Elapsed().Seconds(), "puts/s")
}

var boltBucket = []byte("tasks")

func boltKey(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

func openBolt(b *testing.B, dir string) *bolt.DB {
	db, err := bolt.Open(filepath.Join(dir, "qm.bolt"), 0o644, &bolt.Options{Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	db.MaxBatchDelay = time.Millisecond
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(boltBucket)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return db
}

// BenchmarkChurnDisk puts 20,000 tasks of 4 KiB (80 MiB), deletes them
// all, and reports the bytes each store holds on disk afterwards: the
// segment log compacts to almost nothing, bbolt keeps its file at its
// high-water mark (freed pages are reused, never returned).
func BenchmarkChurnDisk(b *testing.B) {
	const n = 20000
	payload := benchPayloads[1].b
	b.Run("seglog", func(b *testing.B) {
		for b.Loop() {
			dir := b.TempDir()
			st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever})
			if err != nil {
				b.Fatal(err)
			}
			st.Load()
			st.SetDumper(func(func(*store.Op) error) error { return nil }) // nothing is live at the end
			var t store.Ticket
			for i := uint64(1); i <= n; i++ {
				st.Append(store.Op{Kind: store.Add, Task: store.Task{ID: i, Queue: "q", Seq: int64(i), Payload: payload}})
			}
			for i := uint64(1); i <= n; i++ {
				t = st.Append(store.Op{Kind: store.Delete, Task: store.Task{ID: i}})
			}
			st.Wait(t)
			deadline := time.Now().Add(10 * time.Second)
			for du(b, dir) > 1<<20 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			b.ReportMetric(float64(du(b, dir)), "disk-bytes")
			st.Close()
		}
	})
	b.Run("bbolt", func(b *testing.B) {
		for b.Loop() {
			dir := b.TempDir()
			db := openBolt(b, dir)
			for lo := uint64(1); lo <= n; lo += 1000 {
				db.Update(func(tx *bolt.Tx) error {
					for i := lo; i < lo+1000; i++ {
						tx.Bucket(boltBucket).Put(boltKey(i), payload)
					}
					return nil
				})
			}
			for lo := uint64(1); lo <= n; lo += 1000 {
				db.Update(func(tx *bolt.Tx) error {
					for i := lo; i < lo+1000; i++ {
						tx.Bucket(boltBucket).Delete(boltKey(i))
					}
					return nil
				})
			}
			b.ReportMetric(float64(du(b, dir)), "disk-bytes")
			db.Close()
		}
	})
}

func du(b *testing.B, dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// BenchmarkRecover1M is the start-up of a master with 1,000,000 ready
// 16-byte tasks on disk: open the data dir, replay it, rebuild the
// queue. Once from the log as written (no snapshot yet), once from a
// snapshot; and, for comparison, a full scan of the same tasks in bbolt.
func BenchmarkRecover1M(b *testing.B) {
	const n = 1_000_000
	payload := benchPayloads[0].b
	write := func(b *testing.B, dir string, snapshot bool) {
		st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever})
		if err != nil {
			b.Fatal(err)
		}
		m, err := queue.New(queue.Config{Store: st})
		if err != nil {
			b.Fatal(err)
		}
		items := make([]queue.Item, 1000)
		for i := range items {
			items[i].Payload = payload
		}
		for range n / len(items) {
			if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "tasks", Items: items}); err != nil {
				b.Fatal(err)
			}
		}
		m.Close()
		st.Close()
		if snapshot { // reopen with a tiny CompactMin: the log is snapshotted
			st, _ = seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever, CompactMin: 1})
			m, _ = queue.New(queue.Config{Store: st})
			m.Put(context.Background(), queue.PutRequest{Queue: "tasks", Items: items[:1]})
			ts, _ := m.Get(context.Background(), queue.GetRequest{Queue: "tasks", Max: 1, Owner: 1, NoAck: true}, nil)
			_ = ts
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*")); len(snaps) > 0 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			m.Close()
			st.Close()
		}
	}
	for _, snapshot := range []bool{false, true} {
		name := "seglog-log"
		if snapshot {
			name = "seglog-snapshot"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			write(b, dir, snapshot)
			b.ResetTimer()
			for range b.N {
				st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever})
				if err != nil {
					b.Fatal(err)
				}
				m, err := queue.New(queue.Config{Store: st})
				if err != nil {
					b.Fatal(err)
				}
				if s, _ := m.Stats("tasks"); s.Ready != n {
					b.Fatalf("recovered %d tasks, want %d", s.Ready, n)
				}
				m.Close()
				st.Close()
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/recovery")
		})
	}
	b.Run("bbolt-scan", func(b *testing.B) {
		dir := b.TempDir()
		db := openBolt(b, dir)
		for lo := uint64(1); lo <= n; lo += 10000 {
			db.Update(func(tx *bolt.Tx) error {
				bk := tx.Bucket(boltBucket)
				bk.FillPercent = 1
				for i := lo; i < lo+10000; i++ {
					bk.Put(boltKey(i), payload)
				}
				return nil
			})
		}
		db.Close()
		b.ResetTimer()
		for range b.N {
			db := openBolt(b, dir)
			count := 0
			db.View(func(tx *bolt.Tx) error {
				return tx.Bucket(boltBucket).ForEach(func(k, v []byte) error {
					_ = append([]byte(nil), v...)
					count++
					return nil
				})
			})
			if count != n {
				b.Fatalf("scanned %d", count)
			}
			db.Close()
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/recovery")
	})
}
