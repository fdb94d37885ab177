package worker

import (
	"bufio"
	"bytes"
	"errors"
	"testing"

	"github.com/qm-dev/qm/internal/jsonval"
)

// FuzzChildOutput reads a child's stdout as the stdio handler does, cut
// into lines of at most maxLine bytes through a small buffer, and parses
// each: no input may panic, a line is never longer than maxLine, and a
// control line is never taken for a result.
func FuzzChildOutput(f *testing.F) {
	for _, seed := range []string{
		"1\n", "\"hello\"\n", "{\"a\":[1,2.5,null]}\r\n", "!error bad input\n", "!error\n",
		"!errorx\n", "!msgpack\n", "!pipeline\n1\n", "garbage\n", "\n", "1 2\n", "[1,\n", "1\n2\n", "\"a\u2028b\"\n",
		"\"" + string(bytes.Repeat([]byte("x"), 100)) + "\"\n", "\xff\xfe\n", "!error \xff\n", "123",
		"!retry 30 rate limited\n", "!retry 0.5\n", "!retry\n", "!retry -1 x\n", "!retry NaN x\n", "!retry 1e300 x\n", "!retryx\n",
		"!fail bad input\n", "!fail\n", "!failx\n",
	} {
		f.Add([]byte(seed), uint16(64))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxLine uint16) {
		lr := &lineReader{r: bufio.NewReaderSize(bytes.NewReader(data), 16), max: int(maxLine)}
		for {
			line, err := lr.readLine()
			if errors.Is(err, errLineTooLong) {
				continue
			}
			if err != nil {
				return
			}
			if len(line) > int(maxLine) {
				t.Fatalf("line of %d bytes, over %d", len(line), maxLine)
			}
			if n, ok := parseInt(line); ok {
				if v, err := jsonval.ParseStrict(line); err != nil || v != n {
					t.Fatalf("line %q: fast path %d, decoder %#v, %v", line, n, v, err)
				}
			}
			v, err := parseResultLine(line)
			var ce *childError
			switch {
			case err == nil && len(line) > 0 && line[0] == controlByte:
				t.Fatalf("control line %q taken for the result %#v", line, v)
			case err != nil && !errors.Is(err, errProtocol) && !errors.As(err, &ce) && !errors.Is(err, errPipelineHello):
				t.Fatalf("line %q: error %v is neither a protocol error nor the child's", line, err)
			case err == nil && v != nil && bytes.Equal(bytes.TrimSpace(line), []byte("null")):
				t.Fatalf("null read as %#v", v)
			}
		}
	})
}

// FuzzSimpleJSON checks that the fast path of a task line writes what
// jsonval.Marshal writes.
func FuzzSimpleJSON(f *testing.F) {
	for _, s := range []string{"", "hello", "a\"b", "tab\there", "é", "<&>", "x\\y"} {
		f.Add(s, int64(-42), uint64(1<<63))
	}
	f.Fuzz(func(t *testing.T, s string, i int64, u uint64) {
		for _, v := range []any{s, i, u} {
			got, ok := appendSimpleJSON(nil, v)
			if !ok {
				continue
			}
			want, err := jsonval.Marshal(v)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%#v: fast path %q, Marshal %q, %v", v, got, want, err)
			}
		}
	})
}
