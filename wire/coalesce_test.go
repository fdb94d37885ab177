package wire

import (
	"io"
	"net"
	"testing"
	"time"
)

// A server session's ledger counts the data written for the streams it
// tracks, and only for them.
func TestSendLedgerCountsTrackedStreams(t *testing.T) {
	a, b := net.Pipe()
	server, ledger, err := ServerSession(a, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := ClientSession(b, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	accept := func() (uint32, func(p []byte)) {
		t.Helper()
		cs, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Write([]byte{1}); err != nil { // a stream is announced with its first data
			t.Fatal(err)
		}
		ss, err := server.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		write := func(p []byte) {
			t.Helper()
			if _, err := ss.Write(p); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(cs, make([]byte, len(p))); err != nil {
				t.Fatal(err)
			}
		}
		return ss.StreamID(), write
	}
	tracked, writeTracked := accept()
	other, writeOther := accept()
	ledger.Track(tracked)
	writeTracked(make([]byte, 100))
	writeOther(make([]byte, 50))
	writeTracked(make([]byte, 20))
	if got := ledger.Written(tracked); got != 120 {
		t.Errorf("tracked stream: %d bytes written, want 120", got)
	}
	if got := ledger.Handed(tracked); got != 120 {
		t.Errorf("tracked stream: %d bytes handed, want 120", got)
	}
	if got := ledger.Written(other); got != 0 {
		t.Errorf("untracked stream: %d bytes written, want 0", got)
	}
	ledger.Untrack(tracked)
	writeTracked(make([]byte, 10))
	if got := ledger.Written(tracked); got != 0 {
		t.Errorf("after Untrack: %d bytes written, want 0", got)
	}
	var none *SendLedger // a client session's
	none.Track(1)
	if none.Written(1) != 0 || none.Handed(1) != 0 {
		t.Error("a nil ledger counted something")
	}
}
