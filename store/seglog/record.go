package seglog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/qm-dev/qm/store"
)

// File headers: 8 magic bytes. Format 02 adds optional fields at the end
// of Add, Move and Requeue records (due time, priority, idempotency key)
// and the Key, SetPolicy and ForgetKeys records; format 03 the Deleted
// record; format 04 (logs only) the group record. Files of older formats
// load as they are; a qm that knows only an older format refuses newer
// files, where it would misread their records as a torn tail.
const (
	logMagic    = "QMLOG04\n"
	snapMagic   = "QMSNP03\n"
	logMagicV3  = "QMLOG03\n"
	logMagicV2  = "QMLOG02\n"
	snapMagicV2 = "QMSNP02\n"
	logMagicV1  = "QMLOG01\n"
	snapMagicV1 = "QMSNP01\n"
	headerLen   = 8
)

// headerError says what is wrong with the header of file name, whose
// bytes are b and whose headers start with prefix (what names the kind of
// file): a format newer than this qmaster reads, or damage.
func headerError(name string, b []byte, prefix, what string) error {
	if len(b) >= headerLen && string(b[:len(prefix)]) == prefix && b[headerLen-1] == '\n' {
		return fmt.Errorf("%w: %s is in format %s, and this qmaster reads formats up to %s: run that qmaster or a later one, or restore a copy of the directory made before it ran",
			store.ErrNewerFormat, name, b[len(prefix):headerLen-1], formatOf(logMagic))
	}
	return fmt.Errorf("%w: %s: not a qm %s (bad header)", store.ErrCorrupt, name, what)
}

// formatOf returns the format number of a file header: "03" of "QMLOG03\n".
func formatOf(header string) string { return header[5:7] }

// formatSince says since when the qmasters that write each log format
// have been built, for the warning that a directory moved to a newer one.
var formatSince = map[string]string{"02": "2026-12-02", "03": "2026-12-06", "04": "the evening of 2026-12-06"}

// isLogMagic and isSnapMagic accept every format this package reads.
func isLogMagic(h string) bool {
	return h == logMagic || h == logMagicV3 || h == logMagicV2 || h == logMagicV1
}
func isSnapMagic(h string) bool { return h == snapMagic || h == snapMagicV2 || h == snapMagicV1 }

// Bits of the extension of an Add, Move or Requeue record: which optional
// fields follow, in this order.
const (
	extDue      = 1 << iota // varint: unix nanoseconds
	extPriority             // uvarint
	extKey                  // string
)

// recHeaderLen is the length and CRC in front of every record body.
const recHeaderLen = 8

// maxRecord bounds a record body, so that a corrupt length is never
// allocated or trusted.
const maxRecord = 1 << 30

// kindMeta ends a snapshot: the highest ID and Seq and the task count.
const kindMeta store.Kind = 100

// kindGroup, in a log segment, says that the records of one Append follow,
// as many as its ID: recovery applies all of them or, when a crash cut
// them short, none. So a completion's results and the acks of their
// tasks are stored together or not at all.
const kindGroup store.Kind = 101

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Decoding errors.
var (
	errShort    = errors.New("truncated record")
	errChecksum = errors.New("checksum mismatch")
	errBadBody  = errors.New("malformed record")
)

// appendRecord appends op as a record to b.
func appendRecord(b []byte, op *store.Op) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	t := &op.Task
	b = append(b, byte(op.Kind))
	b = binary.AppendUvarint(b, t.ID)
	switch op.Kind {
	case store.Add, store.Move:
		b = binary.AppendVarint(b, t.Seq)
		b = binary.AppendUvarint(b, uint64(t.Attempts))
		b = binary.AppendVarint(b, unixNano(t.Enqueued))
		b = appendString(b, t.Queue)
		b = appendString(b, t.ReplyTo)
		b = appendString(b, t.LastError)
		b = binary.AppendUvarint(b, uint64(len(t.Payload)))
		b = append(b, t.Payload...)
		b = appendExt(b, t, true)
	case store.Delete:
	case store.Attempts:
		b = binary.AppendUvarint(b, uint64(t.Attempts))
	case store.Requeue:
		b = binary.AppendVarint(b, t.Seq)
		b = binary.AppendUvarint(b, uint64(t.Attempts))
		b = appendString(b, t.LastError)
		b = appendExt(b, t, false)
	case store.Key:
		b = binary.AppendVarint(b, unixNano(t.Enqueued))
		b = appendString(b, t.Queue)
		b = appendString(b, t.Key)
	case store.ForgetKeys:
		b = appendString(b, t.Queue)
	case store.Deleted:
		b = appendString(b, t.Queue)
		b = binary.AppendVarint(b, unixNano(t.Enqueued))
		b = binary.AppendVarint(b, unixNano(t.Due))
	case store.SetPolicy:
		p := &op.Policy
		b = appendString(b, t.Queue)
		b = binary.AppendUvarint(b, uint64(p.MaxAttempts))
		b = binary.AppendVarint(b, int64(p.BackoffMin))
		b = binary.AppendVarint(b, int64(p.BackoffMax))
	case kindMeta: // ID is the max ID, Seq the max Seq, Attempts the count
		b = binary.AppendVarint(b, t.Seq)
		b = binary.AppendUvarint(b, uint64(t.Attempts))
	case kindGroup: // ID is how many records follow
	default:
		panic(fmt.Sprintf("seglog: append of op kind %v", op.Kind))
	}
	body := b[start+recHeaderLen:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(body, castagnoli))
	return b
}

// appendExt appends the optional fields of t that are set, behind a byte
// of bits saying which; nothing when none is, so that a plain task's
// record is as it was in format 01. A Requeue carries the due time only.
func appendExt(b []byte, t *store.Task, whole bool) []byte {
	var bits byte
	if !t.Due.IsZero() {
		bits |= extDue
	}
	if whole && t.Priority != 0 {
		bits |= extPriority
	}
	if whole && t.Key != "" {
		bits |= extKey
	}
	if bits == 0 {
		return b
	}
	b = append(b, bits)
	if bits&extDue != 0 {
		b = binary.AppendVarint(b, t.Due.UnixNano())
	}
	if bits&extPriority != 0 {
		b = binary.AppendUvarint(b, uint64(t.Priority))
	}
	if bits&extKey != 0 {
		b = appendString(b, t.Key)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano is unixNano's inverse: 0 is the zero time.
func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// decoder reads records from a buffer. Strings are interned; Payloads
// alias the buffer.
type decoder struct {
	strs map[string]string
}

// decode reads the record at the start of b into op and returns its
// length. The error is errShort if b ends inside the record, errChecksum
// or errBadBody if it is damaged.
func (d *decoder) decode(b []byte, op *store.Op) (int, error) {
	n, _, err := checkRecord(b)
	if err != nil {
		return 0, err
	}
	if err := d.decodeBody(b[recHeaderLen:n], op); err != nil {
		return 0, err
	}
	return n, nil
}

// checkRecord checks the length and checksum of the record at the start
// of b, and returns its length and kind; its errors are decode's.
func checkRecord(b []byte) (int, store.Kind, error) {
	if len(b) < recHeaderLen {
		return 0, 0, errShort
	}
	n := binary.LittleEndian.Uint32(b)
	if n == 0 || n > maxRecord {
		return 0, 0, fmt.Errorf("%w: body length %d", errBadBody, n)
	}
	if uint64(len(b)-recHeaderLen) < uint64(n) {
		return 0, 0, errShort
	}
	body := b[recHeaderLen : recHeaderLen+int(n)]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, 0, errChecksum
	}
	return recHeaderLen + int(n), store.Kind(body[0]), nil
}

func (d *decoder) decodeBody(body []byte, op *store.Op) error {
	r := reader{b: body[1:]}
	*op = store.Op{Kind: store.Kind(body[0])}
	t := &op.Task
	t.ID = r.uvarint()
	switch op.Kind {
	case store.Add, store.Move:
		t.Seq = r.varint()
		t.Attempts = r.count()
		if ns := r.varint(); ns != 0 {
			t.Enqueued = time.Unix(0, ns)
		}
		t.Queue = d.intern(r.bytes())
		t.ReplyTo = d.intern(r.bytes())
		t.LastError = string(r.bytes())
		t.Payload = r.bytes()
		d.ext(&r, t, true)
	case store.Delete:
	case store.Attempts:
		t.Attempts = r.count()
	case store.Requeue:
		t.Seq = r.varint()
		t.Attempts = r.count()
		t.LastError = string(r.bytes())
		d.ext(&r, t, false)
	case store.Key:
		if ns := r.varint(); ns != 0 {
			t.Enqueued = time.Unix(0, ns)
		}
		t.Queue = d.intern(r.bytes())
		t.Key = string(r.bytes())
	case store.ForgetKeys:
		t.Queue = d.intern(r.bytes())
	case store.Deleted:
		t.Queue = d.intern(r.bytes())
		t.Enqueued = fromUnixNano(r.varint())
		t.Due = fromUnixNano(r.varint())
	case store.SetPolicy:
		t.Queue = d.intern(r.bytes())
		op.Policy.MaxAttempts = r.count()
		op.Policy.BackoffMin = time.Duration(r.varint())
		op.Policy.BackoffMax = time.Duration(r.varint())
	case kindMeta:
		t.Seq = r.varint()
		t.Attempts = r.count()
	case kindGroup:
		if t.ID < 2 || t.ID > maxRecord {
			return fmt.Errorf("%w: a group of %d records", errBadBody, t.ID)
		}
	default:
		return fmt.Errorf("%w: unknown kind %d", errBadBody, body[0])
	}
	if r.err {
		return fmt.Errorf("%w: %v record ends early", errBadBody, op.Kind)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d bytes after a %v record", errBadBody, len(r.b), op.Kind)
	}
	return nil
}

// ext reads the optional fields appendExt wrote, if any; whole as there.
func (d *decoder) ext(r *reader, t *store.Task, whole bool) {
	if len(r.b) == 0 || r.err {
		return
	}
	bits := r.b[0]
	r.b = r.b[1:]
	known := byte(extDue)
	if whole {
		known |= extPriority | extKey
	}
	if bits == 0 || bits&^known != 0 {
		r.err = true
		return
	}
	if bits&extDue != 0 {
		t.Due = time.Unix(0, r.varint())
	}
	if bits&extPriority != 0 {
		t.Priority = r.count()
	}
	if bits&extKey != 0 {
		t.Key = string(r.bytes())
	}
}

// intern returns b as a string, one copy per distinct value.
func (d *decoder) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	if d.strs == nil {
		d.strs = make(map[string]string)
	}
	s := string(b)
	d.strs[s] = s
	return s
}

// reader reads varint fields; err is set, and zeros returned, past the end.
type reader struct {
	b   []byte
	err bool
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err, r.b = true, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err, r.b = true, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) count() int {
	v := r.uvarint()
	if v > 1<<31 {
		r.err = true
		return 0
	}
	return int(v)
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err, r.b = true, nil
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}
