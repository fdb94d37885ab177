package wire

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// oldMaster serves one connection the way a master that predates chained
// requests does: it answers each request and ignores the Then it does not
// know. It reports each request it read on reqs. With closeStreams, it
// closes each stream after one response, saying so in it.
func oldMaster(t *testing.T, reqs chan<- Request, closeStreams bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		p := make([]byte, PreambleLen)
		if _, err := io.ReadFull(conn, p); err != nil || CheckPreamble(conn, p) != nil {
			return
		}
		sess, _, err := ServerSession(conn, time.Second)
		if err != nil {
			return
		}
		defer sess.Close()
		for {
			stream, err := sess.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer stream.Close()
				codec := NewCodec(stream, 0)
				for {
					var req Request
					if err := codec.Read(&req); err != nil {
						return
					}
					reqs <- req
					resp := Response{ClientID: 1, StreamClosed: closeStreams}
					if req.Op == OpPut {
						resp.IDs = []uint64{1}
					}
					if err := codec.Write(&resp); err != nil || closeStreams {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// A master that ran the first request of a chain but not its Then is
// told apart from a Then that found nothing: ErrChainIgnored.
func TestChainIgnoredByOldMaster(t *testing.T) {
	reqs := make(chan Request, 8)
	addr := oldMaster(t, reqs, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, Config{Addr: addr, Role: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-reqs // hello

	ts, completeErr, err := c.CompleteThenGet(ctx, "tasks", "results", []Completion{{ID: 7, Value: msgpack.RawMessage{0x01}}}, GetOptions{Max: 4})
	if completeErr != nil || !errors.Is(err, ErrChainIgnored) || len(ts) != 0 {
		t.Fatalf("CompleteThenGet at an old master: %v, %v, %v; want ErrChainIgnored alone", ts, completeErr, err)
	}
	if req := <-reqs; req.Op != OpComplete || req.Then == nil || req.Then.Op != OpGet {
		t.Fatalf("the master got %+v, want a complete chained to a get", req)
	}

	ids, ts, putErr, err := c.PutThenGet(ctx, "tasks", []msgpack.RawMessage{{0x02}}, PutOptions{}, "results", GetOptions{})
	if putErr != nil || !errors.Is(err, ErrChainIgnored) || len(ids) != 1 || len(ts) != 0 {
		t.Fatalf("PutThenGet at an old master: ids %v, tasks %v, putErr %v, err %v; want the put's id and ErrChainIgnored", ids, ts, putErr, err)
	}
}

// A stream the master says it closes never goes back to the client's
// pool: each call after it runs on a new stream and succeeds.
func TestStreamClosedByMasterNotReused(t *testing.T) {
	reqs := make(chan Request, 8)
	addr := oldMaster(t, reqs, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, Config{Addr: addr, Role: "producer"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 {
		if _, err := c.Queues(ctx); err != nil {
			t.Fatalf("call %d after a stream the master closed: %v", i, err)
		}
	}
}
