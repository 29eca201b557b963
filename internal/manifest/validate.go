package manifest

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/lode-dev/lode/internal/chunk"
)

// ErrInvalid: a Manifest value breaks a rule of the format (Validate). The
// decoder reports the same problems in stored bytes as ErrCorrupt.
var ErrInvalid = errors.New("invalid manifest")

// Limits of the format. The decoder rejects anything above them before it
// allocates, so a hostile manifest cannot make a reader allocate more than a
// small multiple of its own size.
const (
	// MaxChunks bounds the chunk table: 2^24 chunks is 8 TiB at the default
	// chunk size and 64 GiB at the smallest.
	MaxChunks = 1 << 24
	// MaxString bounds every string stored with a 16-bit length (source
	// digest, config strings).
	MaxString = math.MaxUint16
	// MaxList bounds each config list (entrypoint, cmd, env).
	MaxList = 4096
	// MaxNameLen bounds root and tenant names (the same rule as the object
	// layout's names, see store.ValidName).
	MaxNameLen = 128
	// MaxWrappedKey bounds a wrapped data key (a KMS's blob is a few hundred
	// bytes; the file keyring's is 60).
	MaxWrappedKey = 4096
)

// FSTypeExt4 is the only filesystem type this version builds.
const FSTypeExt4 = "ext4"

// Compression values (Manifest.Compression). The byte is part of format
// version 1 and was reserved for zstd from the start, so adding the value
// needs no version bump: a reader that predates it rejects the manifest
// (ErrCorrupt) instead of misreading chunks.
const (
	// CompressionNone: each chunk's sealed plaintext is its image bytes.
	CompressionNone = 0
	// CompressionZstd: each non-hole chunk's sealed plaintext is one zstd
	// frame holding its image bytes (docs/beyond.md, "Compression").
	CompressionZstd = 1
)

// ParseCompression maps a compression's name ("none" or "", "zstd") to its
// Manifest.Compression value.
func ParseCompression(s string) (uint8, error) {
	switch s {
	case "", "none":
		return CompressionNone, nil
	case "zstd":
		return CompressionZstd, nil
	}
	return 0, fmt.Errorf("compression %q: want none or zstd", s)
}

// Validate reports the first rule m breaks, wrapping ErrInvalid: lengths
// consistent (len(Keys) == len(Names) == chunk.Count(ImageSize, ChunkSize)),
// a valid chunk size, a known FSType and Compression, holes (zero names) with
// zero keys and stored chunks with non-zero keys, config and strings within
// the format's limits, hints that name distinct chunks.
func (m *Manifest) Validate() error {
	if err := m.validatePublic(); err != nil {
		return err
	}
	return m.validateSecret()
}

// validatePublic checks the fields ReadPublic returns.
func (m *Manifest) validatePublic() error {
	if err := validName("root", m.Root); err != nil {
		return err
	}
	if err := chunk.ValidSize(m.ChunkSize); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if m.ImageSize <= 0 || m.ImageSize > int64(MaxChunks)*int64(m.ChunkSize) {
		return fmt.Errorf("%w: image size %d: must be between 1 and %d chunks of %d bytes", ErrInvalid, m.ImageSize, MaxChunks, m.ChunkSize)
	}
	if n := chunk.Count(m.ImageSize, m.ChunkSize); len(m.Names) != n {
		return fmt.Errorf("%w: %d chunk names, want %d for %d bytes in chunks of %d", ErrInvalid, len(m.Names), n, m.ImageSize, m.ChunkSize)
	}
	if m.FSType != FSTypeExt4 {
		return fmt.Errorf("%w: filesystem type %q: want %q", ErrInvalid, m.FSType, FSTypeExt4)
	}
	if m.Compression != CompressionNone && m.Compression != CompressionZstd {
		return fmt.Errorf("%w: compression %d: unknown (want %d or %d)", ErrInvalid, m.Compression, CompressionNone, CompressionZstd)
	}
	for _, f := range []struct{ field, s string }{
		{"source digest", m.SourceDigest}, {"source ref", m.SourceRef}, {"source index digest", m.SourceIndexDigest},
	} {
		if len(f.s) > MaxString {
			return fmt.Errorf("%w: %s: %d bytes, at most %d", ErrInvalid, f.field, len(f.s), MaxString)
		}
	}
	if len(m.DiffIDs) > MaxList {
		return fmt.Errorf("%w: %d diff IDs, at most %d", ErrInvalid, len(m.DiffIDs), MaxList)
	}
	for i, d := range m.DiffIDs {
		if len(d) > MaxString {
			return fmt.Errorf("%w: diff ID %d: %d bytes, at most %d", ErrInvalid, i, len(d), MaxString)
		}
	}
	return nil
}

// validateSecret checks the fields only Open returns; the public part must
// already be valid.
func (m *Manifest) validateSecret() error {
	if len(m.Keys) != len(m.Names) {
		return fmt.Errorf("%w: %d keys for %d chunks", ErrInvalid, len(m.Keys), len(m.Names))
	}
	for i, name := range m.Names {
		switch hole, zeroKey := name.IsZero(), m.Keys[i] == (chunk.Key{}); {
		case hole && !zeroKey:
			return fmt.Errorf("%w: chunk %d is a hole but has a key", ErrInvalid, i)
		case !hole && zeroKey:
			return fmt.Errorf("%w: chunk %d (%s) has a zero key", ErrInvalid, i, name)
		}
	}
	c := &m.Config
	for _, l := range []struct {
		field string
		list  []string
	}{{"entrypoint", c.Entrypoint}, {"cmd", c.Cmd}, {"env", c.Env}} {
		if len(l.list) > MaxList {
			return fmt.Errorf("%w: config %s: %d entries, at most %d", ErrInvalid, l.field, len(l.list), MaxList)
		}
		for i, s := range l.list {
			if len(s) > MaxString {
				return fmt.Errorf("%w: config %s[%d]: %d bytes, at most %d", ErrInvalid, l.field, i, len(s), MaxString)
			}
		}
	}
	if len(c.WorkingDir) > MaxString || len(c.User) > MaxString {
		return fmt.Errorf("%w: config working dir or user longer than %d bytes", ErrInvalid, MaxString)
	}
	if len(m.Hints) > len(m.Names) {
		return fmt.Errorf("%w: %d hints for %d chunks", ErrInvalid, len(m.Hints), len(m.Names))
	}
	seen := make([]uint64, (len(m.Names)+63)/64)
	for i, h := range m.Hints {
		if int64(h) >= int64(len(m.Names)) {
			return fmt.Errorf("%w: hint %d names chunk %d of %d", ErrInvalid, i, h, len(m.Names))
		}
		if seen[h/64]&(1<<(h%64)) != 0 {
			return fmt.Errorf("%w: hint %d repeats chunk %d", ErrInvalid, i, h)
		}
		seen[h/64] |= 1 << (h % 64)
	}
	return nil
}

// validName applies the object layout's naming rule (store.ValidName, which
// this package cannot import) to roots and tenants: 1–128 characters from
// [A-Za-z0-9._:@+-], not starting with '.'.
func validName(kind, s string) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("%w: %s name %q: must be 1 to %d characters", ErrInvalid, kind, s, MaxNameLen)
	}
	if s[0] == '.' {
		return fmt.Errorf("%w: %s name %q: must not start with '.'", ErrInvalid, kind, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._:@+-", c) >= 0
		if !ok {
			return fmt.Errorf("%w: %s name %q: byte %q not allowed (use A-Z a-z 0-9 . _ : @ + -)", ErrInvalid, kind, s, c)
		}
	}
	return nil
}
