package pyproto_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/qm-dev/qm/pyproto"
)

func TestMessageRoundTrip(t *testing.T) {
	for _, msg := range [][]byte{{}, []byte("#WELCOME#"), bytes.Repeat([]byte{0xff}, 256)} {
		var buf bytes.Buffer
		if err := pyproto.WriteMessage(&buf, msg); err != nil {
			t.Fatal(err)
		}
		if got := buf.Len(); got != 4+len(msg) {
			t.Fatalf("frame of %d-byte message is %d bytes, want %d", len(msg), got, 4+len(msg))
		}
		got, err := pyproto.ReadMessage(&buf, 256)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("read %q, want %q", got, msg)
		}
	}
}

// writeCounter counts Write calls, to check that a frame is one write.
type writeCounter struct {
	bytes.Buffer
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

func TestWriteMessageSingleWrite(t *testing.T) {
	var w writeCounter
	if err := pyproto.WriteMessage(&w, []byte("#CHALLENGE#0123456789abcdefghij")); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 {
		t.Fatalf("WriteMessage made %d writes, want 1", w.writes)
	}
	want := "\x00\x00\x00\x1f#CHALLENGE#0123456789abcdefghij"
	if w.String() != want {
		t.Fatalf("wrote %q, want %q", w.String(), want)
	}
}

func TestReadMessageTooLargeDoesNotAllocate(t *testing.T) {
	for name, frame := range map[string]string{
		"short form": "\x40\x00\x00\x00",                                 // 1<<30
		"long form":  "\xff\xff\xff\xff\x00\x00\x00\x00\x40\x00\x00\x00", // 1<<30
		"long max":   "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", // 1<<64 - 1
	} {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := pyproto.ReadMessage(strings.NewReader(frame), 256)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, pyproto.ErrMessageTooLarge) {
				t.Fatalf("err = %v, want ErrMessageTooLarge", err)
			}
			if !strings.Contains(err.Error(), "> 256 B)") {
				t.Errorf("error %q does not give the limit", err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Fatalf("refusing the frame allocated %d bytes", n)
			}
		})
	}
}

// TestReadMessageAllocatesWhatArrives: a header within the limit that
// claims far more than is then sent costs about what was sent, not what
// the header claimed; a body sent whole is read whole, at any size.
func TestReadMessageAllocatesWhatArrives(t *testing.T) {
	const claim = 64 << 20
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := pyproto.ReadMessage(io.MultiReader(strings.NewReader("\x04\x00\x00\x00"), strings.NewReader(strings.Repeat("x", 1000))), claim)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("a header claiming %d MiB and 1000 bytes of body allocated %d bytes", claim>>20, n)
	}
	for _, size := range []int{0, 1, 64<<10 - 1, 64 << 10, 64<<10 + 1, 1 << 20, 3<<20 + 7} {
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i * 7)
		}
		var buf bytes.Buffer
		if err := pyproto.WriteMessage(&buf, body); err != nil {
			t.Fatal(err)
		}
		got, err := pyproto.ReadMessage(iotest.OneByteReader(&buf), claim)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%d-byte body: %d bytes back, %v", size, len(got), err)
		}
	}
}

func TestReadMessageLongForm(t *testing.T) {
	// Python uses the -1 form only above 2 GiB, but it may carry any length.
	r := strings.NewReader("\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x05hello")
	msg, err := pyproto.ReadMessage(r, 256)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg) != "hello" {
		t.Fatalf("read %q, want hello", msg)
	}
}

func TestReadMessageErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  error
	}{
		{"negative length", "\xff\xff\xff\xfe", pyproto.ErrBadFrame},
		{"most negative length", "\x80\x00\x00\x00", pyproto.ErrBadFrame},
		{"empty stream", "", io.EOF},
		{"short header", "\x00\x00", io.ErrUnexpectedEOF},
		{"short long header", "\xff\xff\xff\xff\x00\x00", io.ErrUnexpectedEOF},
		{"short body", "\x00\x00\x00\x05hel", io.ErrUnexpectedEOF},
		{"no body", "\x00\x00\x00\x05", io.ErrUnexpectedEOF},
		{"over limit by one", "\x00\x00\x01\x01", pyproto.ErrMessageTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pyproto.ReadMessage(strings.NewReader(tt.input), 256)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
