package jsonval

import (
	"reflect"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{"42", int64(42)},
		{" -7 ", int64(-7)},
		{"1.5", 1.5},
		{"1e400", "1e400"},
		{"hello", "hello"},
		{"hello world", "hello world"},
		{`"quoted"`, "quoted"},
		{"true", true},
		{"null", nil},
		{"[1,2]", []any{int64(1), int64(2)}},
		{`{"a":1}`, map[string]any{"a": int64(1)}},
		{"1 2", "1 2"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := Parse(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestMarshal(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"int", int64(9), "9"},
		{"utf8 bytes", []byte("hi"), `"hi"`},
		{"binary bytes", []byte{0xff, 0x00}, `"/wA="`},
		{"nested", map[string]any{"a": []any{[]byte("x"), nil}}, `{"a":["x",null]}`},
		{"any keys", map[any]any{int64(1): "one"}, `{"1":"one"}`},
		{"no html escape", "<a>", `"<a>"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Marshal(tt.in)
			if err != nil || string(got) != tt.want {
				t.Errorf("Marshal(%#v) = %s, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
}
