package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/qm-dev/qm/internal/freeport"
)

// Keys of the Redis runs.
const (
	redisTasks   = "qbench:tasks"
	redisResults = "qbench:results"
)

// errNoRedis marks the Redis rows as skipped rather than failed.
var errNoRedis = errors.New("skipped: redis-server not installed (apt-get install redis-server)")

// startRedis starts redis-server on a free loopback port, without
// persistence, and returns it with a client once it answers PING.
func (b *bench) startRedis(ctx context.Context) (*proc, string, error) {
	path, err := exec.LookPath(b.opts.RedisServer)
	if err != nil {
		return nil, "", errNoRedis
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	p, err := b.procs.start("redis-server", []string{
		path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--loglevel", "warning",
	}, nil, nil)
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	err = waitFor(ctx, 10*time.Second, "redis-server to answer", func() bool {
		return rdb.Ping(ctx).Err() == nil
	}, p)
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// freePort returns a loopback port that was free a moment ago, below the
// kernel's ephemeral range (freeport.Port), so that no connection takes
// it before the server it is for binds it.
func freePort() (int, error) { return freeport.Port() }

// startRedisWorkers starts w worker processes (qbench worker-redis) that
// take up to batch tasks at a time, and waits until each says it is
// connected.
func (b *bench) startRedisWorkers(ctx context.Context, addr string, w, batch int) ([]*proc, error) {
	argv := []string{b.self, "worker-redis", "--addr", addr, "--batch", strconv.Itoa(batch)}
	return b.startReady(ctx, "redis worker", w, argv)
}

// startReady starts n copies of argv, named name 0, name 1 ..., and waits
// until each has printed the line "ready".
func (b *bench) startReady(ctx context.Context, name string, n int, argv []string) ([]*proc, error) {
	ready := make(chan struct{}, n)
	var ps []*proc
	for i := range n {
		p, err := b.procs.start(name+" "+strconv.Itoa(i), argv, nil, func(line string) {
			if line == "ready" {
				ready <- struct{}{}
			}
		})
		if err != nil {
			return ps, err
		}
		ps = append(ps, p)
	}
	got := 0
	err := waitFor(ctx, 10*time.Second, name+"s to be ready", func() bool {
		for {
			select {
			case <-ready:
				got++
			default:
				return got >= n
			}
		}
	}, ps...)
	return ps, err
}

// redisSystem is a redis-server with its workers and a connected producer.
type redisSystem struct {
	processes
	rdb     *redis.Client
	batch   int
	payload []byte
}

// startRedisSystem starts redis-server and w workers, for payloads of size
// bytes: with the batching of qm's batched run (the producer's batch, and
// workers taking as many tasks per call as a qworker's --concurrency), or,
// with oneByOne, one request per operation.
func (b *bench) startRedisSystem(ctx context.Context, size, w int, oneByOne bool) (sys system, err error) {
	batch, workerBatch := b.opts.QMBatch, b.opts.QMConcurrency
	if oneByOne {
		batch, workerBatch = 1, 1
	}
	s := &redisSystem{batch: batch, payload: bytes.Repeat([]byte{'x'}, size)}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	server, addr, err := b.startRedis(ctx)
	if err != nil {
		return nil, err
	}
	s.server = server
	if s.workers, err = b.startRedisWorkers(ctx, addr, w, workerBatch); err != nil {
		return nil, err
	}
	s.rdb = redis.NewClient(&redis.Options{Addr: addr, PoolSize: 4})
	return s, nil
}

func (s *redisSystem) throughput(ctx context.Context, n int) (time.Duration, error) {
	return redisThroughput(ctx, s.rdb, s.batch, n, s.payload)
}

func (s *redisSystem) roundTrips(ctx context.Context, count int) ([]time.Duration, error) {
	return redisRoundTrips(ctx, s.rdb, count, s.payload)
}

func (s *redisSystem) close() {
	if s.rdb != nil {
		s.rdb.Close()
	}
	s.stop()
}

// redisTask is a task as the Redis runs carry it: an 8-byte ID, then the payload.
func redisTask(id int, payload []byte) []byte {
	t := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint64(t, uint64(id))
	copy(t[8:], payload)
	return t
}

// redisThroughput pushes n tasks, batch per LPUSH (one command with many
// values), while it collects their results: up to batch per RPOP with a
// count, and a BRPOP when the list is empty. That is the most a user of
// plain lists would do to go fast.
func redisThroughput(ctx context.Context, rdb *redis.Client, batch, n int, payload []byte) (time.Duration, error) {
	start := time.Now()
	err := both(ctx, func(ctx context.Context) error {
		vals := make([]any, 0, batch)
		for sent := 0; sent < n; {
			vals = vals[:0]
			for i := 0; i < batch && sent+i < n; i++ {
				vals = append(vals, redisTask(sent+i, payload))
			}
			if err := rdb.LPush(ctx, redisTasks, vals...).Err(); err != nil {
				return fmt.Errorf("lpush: %w", err)
			}
			sent += len(vals)
		}
		return nil
	}, func(ctx context.Context) error {
		for got := 0; got < n; {
			vs, err := rdb.RPopCount(ctx, redisResults, batch).Result()
			if errors.Is(err, redis.Nil) {
				if vs, err = rdb.BRPop(ctx, time.Second, redisResults).Result(); err == nil {
					vs = vs[1:] // [key, value]
				}
			}
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return fmt.Errorf("collect results: %w", err)
			}
			if got == 0 && (len(vs) == 0 || !bytes.Equal([]byte(vs[0][8:]), payload)) {
				return errors.New("redis result is not the payload")
			}
			got += len(vs)
		}
		return nil
	})
	return time.Since(start), err
}

// redisRoundTrips pushes one task and pops its result, count times.
func redisRoundTrips(ctx context.Context, rdb *redis.Client, count int, payload []byte) ([]time.Duration, error) {
	out := make([]time.Duration, 0, count)
	for i := range count {
		start := time.Now()
		if err := rdb.LPush(ctx, redisTasks, redisTask(i, payload)).Err(); err != nil {
			return nil, fmt.Errorf("lpush: %w", err)
		}
		if err := rdb.BRPop(ctx, 10*time.Second, redisResults).Err(); err != nil {
			return nil, fmt.Errorf("brpop result: %w", err)
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// redisMemory pushes n ready tasks of size bytes into a fresh redis-server
// and returns its resident set then and its peak.
func (b *bench) redisMemory(ctx context.Context, n, size int) (rss, hwm int64, err error) {
	server, addr, err := b.startRedis(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer server.stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	payload := bytes.Repeat([]byte{'x'}, size)
	vals := make([]any, 0, 1000)
	for sent := 0; sent < n; {
		vals = vals[:0]
		for i := 0; i < cap(vals) && sent+i < n; i++ {
			vals = append(vals, redisTask(sent+i, payload))
		}
		if err := rdb.LPush(ctx, redisTasks, vals...).Err(); err != nil {
			return 0, 0, fmt.Errorf("lpush: %w", err)
		}
		sent += len(vals)
	}
	if l, err := rdb.LLen(ctx, redisTasks).Result(); err != nil || l != int64(n) {
		return 0, 0, fmt.Errorf("redis holds %d tasks (%v), want %d", l, err, n)
	}
	hwm, rss, err = memStatus(server.pid())
	return rss, hwm, err
}

// redisWorker is the hidden worker-redis mode: take tasks and LPUSH them
// back as their results (an echo), until killed. With batch 1 it BRPOPs
// one task at a time; with more it takes up to batch per BLMPOP ... COUNT
// and pushes their results in one LPUSH, the batching qm's workers get.
func redisWorker(ctx context.Context, addr string, batch int) error {
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	fmt.Println("ready")
	for ctx.Err() == nil {
		var vals []any
		if batch <= 1 {
			vs, err := rdb.BRPop(ctx, time.Second, redisTasks).Result()
			if err == nil {
				vals = []any{vs[1]}
			} else if !errors.Is(err, redis.Nil) {
				return workerErr(ctx, err)
			}
		} else {
			_, vs, err := rdb.BLMPop(ctx, time.Second, "RIGHT", int64(batch), redisTasks).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return workerErr(ctx, err)
			}
			for _, v := range vs {
				vals = append(vals, v)
			}
		}
		if len(vals) == 0 {
			continue
		}
		if err := rdb.LPush(ctx, redisResults, vals...).Err(); err != nil {
			return err
		}
	}
	return nil
}

// workerErr is err, or nil if the worker was stopped.
func workerErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}
