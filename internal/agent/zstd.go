package agent

import (
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/lode-dev/lode/internal/chunk"
)

// zstdSlack is room beyond the plaintext size in ciphertext buffers: a zstd
// frame of incompressible data is a few bytes per 128 KiB block longer than
// its content.
const zstdSlack = 1 << 10

// decoder decompresses the chunks of manifest.CompressionZstd images. A
// zstd.Decoder is safe for concurrent DecodeAll and holds only buffers, so
// one serves every agent. Its memory bound is the largest chunk: a frame
// that claims more is refused before anything is allocated.
var decoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(chunk.MaxSize))
})

// frames recycles buffers for a chunk's sealed (compressed) plaintext,
// one per chunk being opened at once.
var frames = make(freeList, 16)

// openChunk verifies and decrypts ct, the ciphertext of c's chunk, and
// decompresses it when the image's chunks are zstd frames. The plaintext is
// a new slice (it goes to the memory cache).
func openChunk(c *call, ct []byte, verified bool) ([]byte, error) {
	open := chunk.Open
	if verified {
		open = chunk.OpenVerified // the tier hashed ct to its name (NameVerifier)
	}
	if !c.zstd {
		return open(c.ref, ct, newPlain(c.size))
	}
	fp := frames.get(c.size + zstdSlack)
	defer frames.put(fp)
	frame, err := open(c.ref, ct, (*fp)[:0])
	if err != nil {
		return nil, err
	}
	*fp = frame[:0]
	d, err := decoder()
	if err != nil {
		return nil, fmt.Errorf("decompressing chunk %s: %w", c.ref.Name, err)
	}
	plain, err := d.DecodeAll(frame, newPlain(c.size))
	if err != nil {
		return nil, &chunk.CorruptError{Name: c.ref.Name, Reason: fmt.Sprintf("decompressing zstd frame: %v", err)}
	}
	return plain, nil
}

// cacheRef is the key of ref's opened plaintext in the memory cache and the
// single-flight table. For a compressed image it is not ref itself: the same
// sealed object read as a zstd frame and read raw gives two different
// plaintexts, and a manifest may claim either, so the two must never share
// an entry. The compressed form's key is a hash of the real key, which
// nobody can steer onto another chunk's real key.
func cacheRef(ref chunk.Ref, zstd bool) chunk.Ref {
	if !zstd {
		return ref
	}
	h := sha256.New()
	h.Write([]byte("lode/agent/zstd-plaintext\x00"))
	h.Write(ref.Key[:])
	var k chunk.Key
	h.Sum(k[:0])
	return chunk.Ref{Name: ref.Name, Key: k}
}
