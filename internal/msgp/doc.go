// Package msgp is qm's one hand-written msgpack: the encoders, the bounded
// reader and walker, and the map-field helper that the fast paths of wire
// (the put, get and complete messages, the results) and pyproto (payloads
// to and from Python) are built from.
//
// It exists because msgpack had been written four times: reflection
// (github.com/vmihailenco/msgpack/v5), wire's hand-written codec, wire's
// bounds walker and pyproto's converter, each with its own notion of what
// a hostile input may cost, and nil written three ways. Reflection stays
// for the rare messages (the admin calls, plain Go values given to
// wire.Encode); everything written by hand is written here.
//
// # Encoding
//
// AppendX(b, v) appends v to b and returns the extended buffer, in the
// shortest form msgpack has for it, which is also the form reflection
// writes (vmihailenco's EncodeUint, EncodeInt, EncodeString and their
// kin, with compact ints): a hand-encoded message and a reflected one are
// the same bytes.
//
// # Reading, and the rules for bounds
//
// A Reader reads values from a byte slice that holds them whole (a frame,
// a payload); it never reads from a stream. The rules that keep a hostile
// input cheap are enforced here and nowhere else:
//
//   - Nothing is allocated from a length. What a Reader returns (strings,
//     bins, ext data, raw values) are slices of its input.
//   - A length is checked against what is left before it is acted on. A
//     str, bin or ext longer than the rest of the input is truncated; an
//     array or map that claims more elements than bytes are left (every
//     element takes one byte at least) is refused at its header. A caller
//     may therefore allocate one element per element of a header the
//     Reader accepted: never more than one per byte of input.
//   - Depth is bounded without recursion: Validate, Reader.Skip and
//     Reader.Raw walk a value with an explicit stack and refuse more than
//     MaxDepth nested non-empty arrays and maps. Code that recurses over
//     Reader.Next counts its own depth against MaxDepth, as pyproto does.
//   - Input from the network is validated whole before reflection decodes
//     it: vmihailenco's decoder allocates a typed slice from a header's
//     length alone, so a 12-byte frame could otherwise ask for gigabytes.
//
// The typed reads (Uint, Int, Bool, Str, ArrayHeader, MapHeader, Time)
// accept what vmihailenco's Decode methods of the same types accept (nil
// as the zero value, any integer form for an integer, a bin for a str),
// within the rules above, so that a hand-written decoder and reflection
// agree on every message that passes Validate.
package msgp
