package worker

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
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
