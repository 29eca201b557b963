package profile

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"
)

// The sealed profile object, byte by byte (docs/formats.md, "Startup
// profile"). Integers are little-endian.
//
//	magic        8   "LODEPRF\x00"
//	version      2   u16 = 1
//	manifest id  32  the SHA-256 the manifest's id is the hex of
//	nonce        12  GCM nonce
//	ciphertext   rest: AES-256-GCM(key, nonce, body, additional data =
//	                 every byte before the ciphertext); ends in the 16-byte tag
//
// Body:
//
//	chunk count u32 (the image's, when recorded), starts u32 (>= 1),
//	created i64 and updated i64 (Unix nanoseconds), entry count u32, then per
//	entry: chunk index u32, starts that read it u32 (1 to starts).

// Version is the profile format version written and read by this code.
const Version = 1

// KeyPurpose is what the sealing key is derived for from the manifest's
// data key (manifest.Manifest.SubKey).
const KeyPurpose = "profile v1"

const (
	magic      = "LODEPRF\x00"
	idSize     = 32
	nonceSize  = 12
	tagSize    = 16
	headerSize = len(magic) + 2 + idSize + nonceSize
	bodyFixed  = 4 + 4 + 8 + 8 + 4
	entrySize  = 8
)

// Limits.
const (
	// MaxEntries bounds a profile's chunks: 4096 chunks of 512 KiB is 2 GiB,
	// far more than any start reads (a python3 start reads ~40 chunks).
	MaxEntries = 4096
	// MaxStarts is how many starts a profile learns from; a worker stops
	// recording once the merged profile has this many.
	MaxStarts = 5
	// MaxStartObjects bounds the start objects a publisher merges (racing
	// publishers may write a few more than MaxStarts).
	MaxStartObjects = 16
)

// Sentinel errors.
var (
	// ErrCorrupt: the bytes are not a profile, or they do not authenticate
	// under the key (tampered, or another tenant's or manifest's).
	ErrCorrupt = errors.New("profile corrupt")
	// ErrStale: the profile was recorded for another manifest or names
	// chunks the image does not have.
	ErrStale = errors.New("profile stale")
	// ErrVersion: written by a format version this code does not read.
	ErrVersion = errors.New("unsupported profile version")
)

// Profile is a learned startup profile of one manifest.
type Profile struct {
	// Chunks are chunk indexes in prefetch order (see Combine); Counts[i] is
	// how many of the Starts read Chunks[i].
	Chunks []uint32
	Counts []uint32
	// Starts is how many starts were merged (1 for a start object).
	Starts int
	// ChunkCount is the image's chunk count (holes included) when recorded.
	ChunkCount int
	// Created is when the first merged start was recorded, Updated when the
	// last was.
	Created, Updated time.Time
}

// FromStart is the profile of one start that read order (first touches,
// agent.Image.ReadOrder) of an image of chunks chunks, at t. Duplicates and
// indexes out of range are dropped; at most MaxEntries are kept.
func FromStart(order []uint32, chunks int, t time.Time) *Profile {
	p := &Profile{Starts: 1, ChunkCount: chunks, Created: t, Updated: t}
	seen := make(map[uint32]bool, len(order))
	for _, c := range order {
		if int64(c) >= int64(chunks) || seen[c] || len(p.Chunks) == MaxEntries {
			continue
		}
		seen[c] = true
		p.Chunks = append(p.Chunks, c)
		p.Counts = append(p.Counts, 1)
	}
	return p
}

// Validate checks p's structure against an image of chunks chunks.
func (p *Profile) Validate(chunks int) error {
	if p.ChunkCount != chunks {
		return fmt.Errorf("recorded for %d chunks, the image has %d: %w", p.ChunkCount, chunks, ErrStale)
	}
	if p.Starts < 1 || len(p.Chunks) != len(p.Counts) || len(p.Chunks) > MaxEntries {
		return fmt.Errorf("%d starts, %d chunks, %d counts (at most %d): %w", p.Starts, len(p.Chunks), len(p.Counts), MaxEntries, ErrCorrupt)
	}
	seen := make(map[uint32]bool, len(p.Chunks))
	for i, c := range p.Chunks {
		if int64(c) >= int64(chunks) {
			return fmt.Errorf("chunk %d out of range (%d chunks): %w", c, chunks, ErrStale)
		}
		if seen[c] {
			return fmt.Errorf("chunk %d listed twice: %w", c, ErrCorrupt)
		}
		seen[c] = true
		if n := p.Counts[i]; n < 1 || int64(n) > int64(p.Starts) {
			return fmt.Errorf("chunk %d read by %d of %d starts: %w", c, n, p.Starts, ErrCorrupt)
		}
	}
	return nil
}

// rawID decodes a manifest id (64 lower-case hex digits).
func rawID(id string) ([]byte, error) {
	b, err := hex.DecodeString(id)
	if err != nil || len(b) != idSize {
		return nil, fmt.Errorf("manifest id %q is not 64 hex digits: %w", id, ErrCorrupt)
	}
	return b, nil
}

// Seal encrypts p for manifest id under key (32 bytes, from the manifest's
// SubKey(KeyPurpose)). p must be valid for its ChunkCount.
func Seal(p *Profile, id string, key []byte) ([]byte, error) {
	return seal(p, id, key, rand.Reader)
}

func seal(p *Profile, id string, key []byte, rnd io.Reader) ([]byte, error) {
	if err := p.Validate(p.ChunkCount); err != nil {
		return nil, fmt.Errorf("sealing profile of manifest %s: %w", id, err)
	}
	raw, err := rawID(id)
	if err != nil {
		return nil, fmt.Errorf("sealing profile: %w", err)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, bodyFixed+entrySize*len(p.Chunks))
	body = binary.LittleEndian.AppendUint32(body, uint32(p.ChunkCount))
	body = binary.LittleEndian.AppendUint32(body, uint32(p.Starts))
	body = binary.LittleEndian.AppendUint64(body, uint64(p.Created.UnixNano()))
	body = binary.LittleEndian.AppendUint64(body, uint64(p.Updated.UnixNano()))
	body = binary.LittleEndian.AppendUint32(body, uint32(len(p.Chunks)))
	for i, c := range p.Chunks {
		body = binary.LittleEndian.AppendUint32(body, c)
		body = binary.LittleEndian.AppendUint32(body, p.Counts[i])
	}
	b := make([]byte, 0, headerSize+len(body)+tagSize)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = append(b, raw...)
	nonce := make([]byte, nonceSize)
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("sealing profile: reading random nonce: %w", err)
	}
	b = append(b, nonce...)
	return aead.Seal(b, nonce, body, b), nil
}

// Open checks, decrypts and decodes a sealed profile of manifest id under
// key, for an image of chunks chunks. Errors: ErrCorrupt (malformed, or not
// authentic under key: tampered, another tenant's), ErrStale (another
// manifest's, or chunks out of range), ErrVersion. No profile is returned
// with an error.
func Open(sealed []byte, id string, key []byte, chunks int) (*Profile, error) {
	raw, err := rawID(id)
	if err != nil {
		return nil, fmt.Errorf("opening profile: %w", err)
	}
	if len(sealed) < len(magic)+2 || string(sealed[:len(magic)]) != magic {
		return nil, fmt.Errorf("opening profile of manifest %s: not a lode profile (bad magic): %w", id, ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(sealed[len(magic):]); v != Version {
		return nil, fmt.Errorf("opening profile of manifest %s: version %d (this lode reads %d): %w", id, v, Version, ErrVersion)
	}
	if len(sealed) < headerSize+tagSize {
		return nil, fmt.Errorf("opening profile of manifest %s: truncated (%d bytes): %w", id, len(sealed), ErrCorrupt)
	}
	if got := sealed[len(magic)+2 : len(magic)+2+idSize]; string(got) != string(raw) {
		return nil, fmt.Errorf("opening profile of manifest %s: it belongs to manifest %x: %w", id, got, ErrStale)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	nonce := sealed[headerSize-nonceSize : headerSize]
	body, err := aead.Open(nil, nonce, sealed[headerSize:], sealed[:headerSize])
	if err != nil {
		return nil, fmt.Errorf("opening profile of manifest %s: authentication failed (tampered, or sealed for another tenant): %w", id, ErrCorrupt)
	}
	p, err := decodeBody(body)
	if err != nil {
		return nil, fmt.Errorf("opening profile of manifest %s: %w", id, err)
	}
	if err := p.Validate(chunks); err != nil {
		return nil, fmt.Errorf("opening profile of manifest %s: %w", id, err)
	}
	return p, nil
}

// decodeBody parses an authenticated body. Its lengths are still checked:
// a key holder could have sealed anything.
func decodeBody(b []byte) (*Profile, error) {
	if len(b) < bodyFixed {
		return nil, fmt.Errorf("body of %d bytes, want at least %d: %w", len(b), bodyFixed, ErrCorrupt)
	}
	le := binary.LittleEndian
	p := &Profile{
		ChunkCount: int(le.Uint32(b[0:])),
		Starts:     int(le.Uint32(b[4:])),
		Created:    time.Unix(0, int64(le.Uint64(b[8:]))),
		Updated:    time.Unix(0, int64(le.Uint64(b[16:]))),
	}
	n := int(le.Uint32(b[24:]))
	rest := b[bodyFixed:]
	if n > MaxEntries || len(rest) != n*entrySize {
		return nil, fmt.Errorf("%d entries in %d bytes (at most %d entries): %w", n, len(rest), MaxEntries, ErrCorrupt)
	}
	if n > 0 {
		p.Chunks, p.Counts = make([]uint32, n), make([]uint32, n)
		for i := range n {
			p.Chunks[i] = le.Uint32(rest[entrySize*i:])
			p.Counts[i] = le.Uint32(rest[entrySize*i+4:])
		}
	}
	return p, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("profile key: %w", err)
	}
	return cipher.NewGCM(b)
}
