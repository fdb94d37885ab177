package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/qm-dev/qm/master/jsqueue"
)

// The streams and consumers of the JetStream runs: JetStream used
// directly, as its own users would at their best. Tasks and results are
// work-queue streams kept in files, as qm's gateway keeps them; workers
// pull up to --qm-concurrency tasks per fetch, publish the results
// asynchronously, wait for them to be stored, then ack each task.
const (
	natsTasks       = "QB_TASKS"
	natsResults     = "QB_RESULTS"
	natsTaskSubj    = "qb.tasks"
	natsResultSubj  = "qb.results"
	natsWorkerName  = "workers"
	natsProducerSub = "producer"
)

// natsSystem is a JetStream server (qbench nats-server) with its workers
// and a connected producer.
type natsSystem struct {
	processes
	nc      *nats.Conn
	js      jetstream.JetStream
	results jetstream.Consumer
	batch   int
	payload []byte
	dir     string

	// packed says each message carries a pack of up to pack tasks (else
	// one task, and pack is 1). A worker fetches one pack, runs its tasks
	// and publishes their results as one message: the records JetStream
	// writes per task (store and delete, of the task and of its result)
	// are divided by the pack's size, which is what a gateway that packed
	// could gain.
	packed bool
	pack   int
}

// startNATSSystem starts a JetStream server in its own process and w
// workers, for payloads of size bytes.
//
// With syncAlways the server fsyncs every write before acknowledging it,
// as qmaster --fsync always (its default) has its embedded node do;
// without, it fsyncs every 2 minutes (JetStream's default), as with
// qmaster --fsync never.
//
// With packed, each message carries up to packSize tasks (see
// natsSystem.packed).
func (b *bench) startNATSSystem(ctx context.Context, size, w int, syncAlways, packed bool) (sys system, err error) {
	s := &natsSystem{batch: b.opts.QMBatch, payload: bytes.Repeat([]byte{'x'}, size), pack: 1}
	if packed {
		s.packed, s.pack = true, b.packSize()
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.dir, err = os.MkdirTemp("", "qbench-nats-"); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	servers, err := b.startReady(ctx, "nats-server", 1, []string{b.self, "nats-server", "--port", strconv.Itoa(port), "--dir", s.dir,
		"--sync-always=" + strconv.FormatBool(syncAlways)})
	if len(servers) > 0 {
		s.server = servers[0]
	}
	if err != nil {
		return nil, err
	}
	if s.nc, err = nats.Connect(url); err != nil {
		return nil, err
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, err
	}
	for name, subj := range map[string]string{natsTasks: natsTaskSubj, natsResults: natsResultSubj} {
		if _, err := s.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}); err != nil {
			return nil, err
		}
	}
	consumer := jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: -1, MaxWaiting: 4096}
	consumer.Durable = natsWorkerName
	if _, err := s.js.CreateConsumer(ctx, natsTasks, consumer); err != nil {
		return nil, err
	}
	consumer.Durable = natsProducerSub
	if s.results, err = s.js.CreateConsumer(ctx, natsResults, consumer); err != nil {
		return nil, err
	}
	s.workers, err = b.startReady(ctx, "nats worker", w, []string{b.self, "worker-nats", "--url", url, "--batch", strconv.Itoa(b.opts.QMConcurrency),
		"--packed=" + strconv.FormatBool(packed)})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *natsSystem) throughput(ctx context.Context, n int) (time.Duration, error) {
	start := time.Now()
	err := both(ctx, func(gctx context.Context) error {
		for sent := 0; sent < n; {
			k := min(s.batch, n-sent)
			futures := make([]jetstream.PubAckFuture, (k+s.pack-1)/s.pack)
			for i := range futures {
				f, err := s.js.PublishAsync(natsTaskSubj, s.message(min(s.pack, k-i*s.pack)))
				if err != nil {
					return fmt.Errorf("publish: %w", err)
				}
				futures[i] = f
			}
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return fmt.Errorf("publish: %w", err)
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			sent += k
		}
		return nil
	}, func(gctx context.Context) error {
		for got := 0; got < n; {
			batch, err := s.results.Fetch(max(1, min(s.batch, n-got)/s.pack), jetstream.FetchMaxWait(time.Second))
			if err != nil {
				return fmt.Errorf("fetch results: %w", err)
			}
			for m := range batch.Messages() {
				results, err := s.unpack(m.Data())
				if err != nil {
					return err
				}
				if got == 0 && !bytes.Equal(results[0], s.payload) {
					return errors.New("a result is not the task's payload")
				}
				if err := m.Ack(); err != nil {
					return err
				}
				got += len(results)
			}
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				return fmt.Errorf("fetch results: %w", err)
			}
			if gctx.Err() != nil {
				return gctx.Err()
			}
		}
		return nil
	})
	return time.Since(start), err
}

func (s *natsSystem) roundTrips(ctx context.Context, count int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, count)
	for range count {
		start := time.Now()
		if _, err := s.js.Publish(ctx, natsTaskSubj, s.message(1)); err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
		m, err := s.results.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			return nil, fmt.Errorf("result: %w", err)
		}
		if err := m.Ack(); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// message is a task message carrying k tasks: the payload itself
// unpacked, else a pack of k.
func (s *natsSystem) message(k int) []byte {
	if !s.packed {
		return s.payload
	}
	var b []byte
	for range k {
		b = appendPacked(b, s.payload)
	}
	return b
}

// unpack is the payloads a message carries.
func (s *natsSystem) unpack(data []byte) ([][]byte, error) {
	if !s.packed {
		return [][]byte{data}, nil
	}
	return unpackPayloads(data)
}

// appendPacked appends p to a pack: its length as a uvarint, then p.
func appendPacked(b, p []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(p))), p...)
}

// unpackPayloads splits a pack into its payloads.
func unpackPayloads(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return nil, errors.New("a packed message is malformed")
		}
		out = append(out, b[w:w+int(n)])
		b = b[w+int(n):]
	}
	if len(out) == 0 {
		return nil, errors.New("a packed message is empty")
	}
	return out, nil
}

func (s *natsSystem) close() {
	if s.nc != nil {
		s.nc.Close()
	}
	s.stop()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// newNATSServerCmd is the hidden JetStream server of the JetStream runs:
// nats-server embedded, so that the bench needs no other software.
func newNATSServerCmd() *cobra.Command {
	var (
		port       int
		dir        string
		syncAlways bool
	)
	cmd := &cobra.Command{
		Use:    "nats-server --port N --dir DIR",
		Short:  "Run a JetStream server on loopback until killed",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, SyncAlways: syncAlways})
			if err != nil {
				return err
			}
			srv.Start()
			if !srv.ReadyForConnections(10 * time.Second) {
				return errors.New("nats-server did not start")
			}
			fmt.Println("ready")
			<-cmd.Context().Done()
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil
		},
	}
	cmd.Flags().IntVar(&port, "port", 4222, "loopback port")
	cmd.Flags().StringVar(&dir, "dir", "", "JetStream's store `directory`")
	cmd.Flags().BoolVar(&syncAlways, "sync-always", false, "fsync every write before acknowledging it")
	return cmd
}

// newNATSWorkerCmd is the hidden worker process of the JetStream runs.
func newNATSWorkerCmd() *cobra.Command {
	var (
		url    string
		batch  int
		packed bool
	)
	cmd := &cobra.Command{
		Use:    "worker-nats --url URL [--batch N] [--packed]",
		Short:  "Pull up to N tasks (one pack of them with --packed), publish each back as its result, ack the tasks, until killed",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return natsWorker(cmd.Context(), url, batch, packed)
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "JetStream server URL")
	cmd.Flags().IntVar(&batch, "batch", 1, "tasks per fetch")
	cmd.Flags().BoolVar(&packed, "packed", false, "each message is a pack of tasks: fetch one message, publish their results as one")
	return cmd
}

func natsWorker(ctx context.Context, url string, batch int, packed bool) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, natsTasks, natsWorkerName)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	fetch := batch
	if packed {
		fetch = 1
	}
	msgs := make([]jetstream.Msg, 0, fetch)
	for ctx.Err() == nil {
		b, err := cons.Fetch(fetch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		msgs = msgs[:0]
		for m := range b.Messages() {
			result := m.Data()
			if packed {
				// Each task's result is its payload, echoed: the pack of
				// results is built anew, as a real worker's would be.
				tasks, err := unpackPayloads(m.Data())
				if err != nil {
					return err
				}
				result = nil
				for _, t := range tasks {
					result = appendPacked(result, t)
				}
			}
			if _, err := js.PublishAsync(natsResultSubj, result); err != nil {
				return err
			}
			msgs = append(msgs, m)
		}
		if len(msgs) == 0 {
			continue
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return nil
		}
		for _, m := range msgs {
			if err := m.Ack(); err != nil {
				return err
			}
		}
	}
	return nil
}

// packSize is the tasks a pack carries in the packed systems, JetStream's
// and qm's alike: --qm-concurrency, the tasks a worker runs at once, at
// most --qm-batch, the tasks of one put, and at most qmaster's limit.
func (b *bench) packSize() int {
	return min(b.opts.QMConcurrency, b.opts.QMBatch, jsqueue.MaxPack)
}
