package chunk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// DefaultSize is the chunk size used unless a build asks for another; it is
// recorded in every manifest.
const DefaultSize = 512 << 10

// MinSize and MaxSize bound the chunk sizes a build may choose. Sizes must
// be a multiple of 4096 (the ext4 block size) so that no filesystem block
// straddles two chunks.
const (
	MinSize = 4 << 10
	MaxSize = 64 << 20
)

// Name is the SHA-256 of a chunk's ciphertext. It is the chunk's identity in
// every store and tier.
type Name [32]byte

// String returns the lower-case hex form used in object keys and logs.
func (n Name) String() string { return hex.EncodeToString(n[:]) }

// IsZero reports whether n is the zero name (used for holes).
func (n Name) IsZero() bool { return n == Name{} }

// ParseName parses the hex form produced by String.
func ParseName(s string) (Name, error) {
	var n Name
	if len(s) != 2*len(n) {
		return n, fmt.Errorf("chunk name %q: want %d hex digits: %w", s, 2*len(n), ErrBadName)
	}
	if _, err := hex.Decode(n[:], []byte(s)); err != nil {
		return n, fmt.Errorf("chunk name %q: %w", s, ErrBadName)
	}
	return n, nil
}

// Key is the AES-256 key of one chunk, derived from its plaintext.
type Key [32]byte

// Ref is everything needed to fetch and open one chunk. The zero Ref is a
// hole: the chunk's plaintext is all zero and nothing is stored.
type Ref struct {
	Name Name
	Key  Key
}

// IsHole reports whether r stands for an all-zero chunk.
func (r Ref) IsHole() bool { return r.Name.IsZero() }

// Sentinel errors; typed errors below unwrap to them.
var (
	// ErrCorrupt means ciphertext did not match its name or failed
	// authentication. Callers must treat it as an I/O error, never as data.
	ErrCorrupt = errors.New("chunk corrupt")
	// ErrBadName means a string is not a chunk name.
	ErrBadName = errors.New("bad chunk name")
)

// CorruptError names the chunk that failed verification and why.
type CorruptError struct {
	Name   Name
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("chunk %s: %s", e.Name, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// NameOf returns the name of a ciphertext.
func NameOf(ciphertext []byte) Name { return sha256.Sum256(ciphertext) }

// Verify checks that ciphertext hashes to name.
func Verify(name Name, ciphertext []byte) error {
	if NameOf(ciphertext) != name {
		return &CorruptError{Name: name, Reason: "ciphertext does not hash to its name"}
	}
	return nil
}

// IsZero reports whether b is all zero bytes.
func IsZero(b []byte) bool {
	// Compare eight bytes at a time; this runs on every chunk of every build.
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Count returns how many chunks of chunkSize cover an image of size bytes.
func Count(size int64, chunkSize int) int {
	return int((size + int64(chunkSize) - 1) / int64(chunkSize))
}

// ValidSize reports an error if chunkSize is not a usable chunk size.
func ValidSize(chunkSize int) error {
	if chunkSize < MinSize || chunkSize > MaxSize || chunkSize%4096 != 0 {
		return fmt.Errorf("chunk size %d: must be a multiple of 4096 between %d and %d", chunkSize, MinSize, MaxSize)
	}
	return nil
}

// Cut reads img in chunkSize pieces and calls fn for each, in order, in the
// caller's goroutine. piece is only valid during the call. The last piece may
// be short. hole is true when the piece is all zero.
func Cut(ctx context.Context, img io.ReaderAt, size int64, chunkSize int, fn func(i int, piece []byte, hole bool) error) error {
	if err := ValidSize(chunkSize); err != nil {
		return err
	}
	buf := make([]byte, chunkSize)
	n := Count(size, chunkSize)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		off := int64(i) * int64(chunkSize)
		l := int64(chunkSize)
		if off+l > size {
			l = size - off
		}
		p := buf[:l]
		if _, err := img.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && len(p) == int(l)) {
			return fmt.Errorf("reading chunk %d at offset %d: %w", i, off, err)
		}
		if err := fn(i, p, IsZero(p)); err != nil {
			return err
		}
	}
	return nil
}
