package manifest

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/lode-dev/lode/internal/chunk"
)

// The sealed manifest, byte by byte (docs/formats.md, "Manifest", has the full
// description). Every integer is little-endian.
//
//	magic        8   "LODEMAN\x00"
//	version      2   u16 = 2 (1 is still read)
//	public       4+n u32 length, then the public part (below)
//	tenant       1+n u8 length, then the tenant name
//	wrapped key  2+n u16 length, then the data key wrapped by the tenant's KEK
//	nonce        12  GCM nonce
//	ciphertext   4+n u32 length, then AES-256-GCM(data key, nonce, secret part,
//	                 additional data = every byte before the ciphertext);
//	                 the last 16 bytes are the tag; the file ends here
//
// Public part:
//
//	root (u8 len + bytes), chunk size u32, image size u64, fstype (u8 len +
//	bytes), compression u8, source digest (u16 len + bytes),
//	[version >= 2: source ref (u16 len + bytes), source index digest (u16
//	len + bytes), diff IDs (u16 count + count × (u16 len + bytes))],
//	chunk count u32, then 32 bytes per chunk: its name, or 32 zero bytes for
//	a hole.
//
// Secret part:
//
//	32 bytes per stored (non-hole) chunk, in chunk order: its key;
//	entrypoint, cmd, env: each u16 count + count × (u16 len + bytes);
//	working dir, user: u16 len + bytes;
//	hints: u32 count + count × u32 chunk index.

// magic opens every sealed manifest.
const magic = "LODEMAN\x00"

const (
	headerSize = len(magic) + 2
	nonceSize  = 12
	tagSize    = 16
	keySize    = 32 // data key and chunk keys
)

// appendStr8 appends a string of at most 255 bytes with a u8 length.
func appendStr8(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

// appendStr16 appends a string of at most MaxString bytes with a u16 length.
func appendStr16(b []byte, s string) []byte {
	return append(binary.LittleEndian.AppendUint16(b, uint16(len(s))), s...)
}

func appendList(b []byte, l []string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(l)))
	for _, s := range l {
		b = appendStr16(b, s)
	}
	return b
}

// publicSize is the exact length of m's encoded public part.
// (Always the current Version's: only appendPublic re-encodes old versions.)
func publicSize(m *Manifest) int {
	n := 1 + len(m.Root) + 4 + 8 + 1 + len(m.FSType) + 1 + 2 + len(m.SourceDigest) + 4 + len(m.Names)*len(chunk.Name{})
	n += 2 + len(m.SourceRef) + 2 + len(m.SourceIndexDigest) + 2
	for _, d := range m.DiffIDs {
		n += 2 + len(d)
	}
	return n
}

// appendPublic appends m's public part in format version (1 or 2; version 1
// has no place for the source fields). m must be valid.
func appendPublic(b []byte, m *Manifest, version uint16) []byte {
	b = appendStr8(b, m.Root)
	b = binary.LittleEndian.AppendUint32(b, uint32(m.ChunkSize))
	b = binary.LittleEndian.AppendUint64(b, uint64(m.ImageSize))
	b = appendStr8(b, m.FSType)
	b = append(b, m.Compression)
	b = appendStr16(b, m.SourceDigest)
	if version >= 2 {
		b = appendStr16(b, m.SourceRef)
		b = appendStr16(b, m.SourceIndexDigest)
		b = appendList(b, m.DiffIDs)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Names)))
	for i := range m.Names {
		b = append(b, m.Names[i][:]...)
	}
	return b
}

// secretSize is the exact length of m's encoded secret part.
func secretSize(m *Manifest) int {
	n := (len(m.Names) - m.Holes()) * keySize
	for _, l := range [][]string{m.Config.Entrypoint, m.Config.Cmd, m.Config.Env} {
		n += 2
		for _, s := range l {
			n += 2 + len(s)
		}
	}
	n += 2 + len(m.Config.WorkingDir) + 2 + len(m.Config.User)
	return n + 4 + 4*len(m.Hints)
}

// appendSecret appends m's secret part. m must be valid.
func appendSecret(b []byte, m *Manifest) []byte {
	for i := range m.Names {
		if !m.Names[i].IsZero() {
			b = append(b, m.Keys[i][:]...)
		}
	}
	b = appendList(b, m.Config.Entrypoint)
	b = appendList(b, m.Config.Cmd)
	b = appendList(b, m.Config.Env)
	b = appendStr16(b, m.Config.WorkingDir)
	b = appendStr16(b, m.Config.User)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Hints)))
	for _, h := range m.Hints {
		b = binary.LittleEndian.AppendUint32(b, h)
	}
	return b
}

// decoder reads fields from untrusted bytes. The first error sticks: later
// reads return zero values, so a parse is a straight line ending in one
// check of d.err. Every length is checked against the remaining bytes (and
// its field's limit) before anything is allocated from it.
type decoder struct {
	what string // "public part", "secret part", "manifest"
	b    []byte
	off  int
	err  error
}

func (d *decoder) fail(field, format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s at offset %d: %s", ErrCorrupt, d.what, field, d.off, fmt.Sprintf(format, args...))
	}
}

// take returns the next n bytes (aliasing the input), or nil after an error.
func (d *decoder) take(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail(field, "need %d bytes, %d left", n, len(d.b)-d.off)
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8(field string) uint8 {
	if p := d.take(field, 1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16(field string) uint16 {
	if p := d.take(field, 2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32(field string) uint32 {
	if p := d.take(field, 4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64(field string) uint64 {
	if p := d.take(field, 8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) str8(field string) string  { return string(d.take(field, int(d.u8(field)))) }
func (d *decoder) str16(field string) string { return string(d.take(field, int(d.u16(field)))) }

// list reads a u16 count and that many str16s; an empty list is nil.
func (d *decoder) list(field string) []string {
	n := int(d.u16(field))
	if d.err != nil || n == 0 {
		return nil
	}
	// Each entry takes at least its 2-byte length: bound n by what is left.
	if n > MaxList || 2*n > len(d.b)-d.off {
		d.fail(field, "%d entries do not fit (at most %d, %d bytes left)", n, MaxList, len(d.b)-d.off)
		return nil
	}
	l := make([]string, n)
	for i := range l {
		l[i] = d.str16(field)
	}
	return l
}

// end fails unless every byte was consumed.
func (d *decoder) end() {
	if d.err == nil && d.off != len(d.b) {
		d.fail("end", "%d trailing bytes", len(d.b)-d.off)
	}
}

// decodePublic parses a public part of format version. The result has nil
// Keys and a zero Config; it is structurally valid (validatePublic).
func decodePublic(b []byte, version uint16) (*Manifest, error) {
	d := &decoder{what: "public part", b: b}
	m := &Manifest{}
	m.Root = d.str8("root")
	m.ChunkSize = int(d.u32("chunk size"))
	size := d.u64("image size")
	if size > math.MaxInt64 {
		d.fail("image size", "%d overflows int64", size)
	}
	m.ImageSize = int64(size)
	m.FSType = d.str8("filesystem type")
	m.Compression = d.u8("compression")
	m.SourceDigest = d.str16("source digest")
	if version >= 2 {
		m.SourceRef = d.str16("source ref")
		m.SourceIndexDigest = d.str16("source index digest")
		m.DiffIDs = d.list("diff IDs")
	}
	n := int(d.u32("chunk count"))
	if d.err == nil && n > MaxChunks {
		d.fail("chunk count", "%d chunks, at most %d", n, MaxChunks)
	}
	names := d.take("chunk names", n*len(chunk.Name{}))
	d.end()
	if d.err != nil {
		return nil, d.err
	}
	if n > 0 {
		m.Names = make([]chunk.Name, n)
		for i := range m.Names {
			copy(m.Names[i][:], names[i*len(chunk.Name{}):])
		}
	}
	if err := m.validatePublic(); err != nil {
		return nil, fmt.Errorf("%w: public part: %w", ErrCorrupt, err)
	}
	return m, nil
}

// decodeSecret parses a secret part into m, whose public fields are set and
// valid, then validates the whole manifest.
func decodeSecret(b []byte, m *Manifest) error {
	d := &decoder{what: "secret part", b: b}
	stored := len(m.Names) - m.Holes()
	keys := d.take("chunk keys", stored*keySize)
	c := &m.Config
	c.Entrypoint = d.list("entrypoint")
	c.Cmd = d.list("cmd")
	c.Env = d.list("env")
	c.WorkingDir = d.str16("working dir")
	c.User = d.str16("user")
	nh := int(d.u32("hint count"))
	if d.err == nil && (nh > len(m.Names) || 4*nh > len(d.b)-d.off) {
		d.fail("hint count", "%d hints for %d chunks, %d bytes left", nh, len(m.Names), len(d.b)-d.off)
	}
	hints := d.take("hints", 4*nh)
	d.end()
	if d.err != nil {
		return d.err
	}
	if len(m.Names) > 0 {
		m.Keys = make([]chunk.Key, len(m.Names))
		for i := range m.Names {
			if !m.Names[i].IsZero() {
				copy(m.Keys[i][:], keys)
				keys = keys[keySize:]
			}
		}
	}
	if nh > 0 {
		m.Hints = make([]uint32, nh)
		for i := range m.Hints {
			m.Hints[i] = binary.LittleEndian.Uint32(hints[4*i:])
		}
	}
	if err := m.validateSecret(); err != nil {
		return fmt.Errorf("%w: secret part: %w", ErrCorrupt, err)
	}
	return nil
}
