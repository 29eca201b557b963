package cachefleet

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/reedsolomon"
	"github.com/lode-dev/lode/internal/chunk"
)

// Shard format, version 1. Every shard is a 44-byte header followed by its
// payload of ceil(Length/M) bytes (the last data shard is zero padded):
//
//	offset size field
//	0      4    magic "LDSH"
//	4      1    version (1)
//	5      1    M, data shards (1..MaxShards)
//	6      1    K, total shards (M..MaxShards)
//	7      1    index of this shard (0..K-1; < M data, ≥ M parity)
//	8      4    chunk length in bytes, big endian (1..chunk.MaxSize)
//	12     32   chunk name (SHA-256 of the whole ciphertext)
//
// The header lets a reader rebuild without knowing the chunk length and
// cross-check that a node answered with the shard it was asked for. It is not
// authenticated: the rebuilt chunk is verified against its name.
const (
	shardMagic   = "LDSH"
	shardVersion = 1
	// HeaderSize is the size of the shard header.
	HeaderSize = 44
	// MaxShards bounds K. Rendezvous reads ask every one of K nodes, so a
	// large K only adds requests; 32 leaves room for wide codes.
	MaxShards = 32
)

// MaxShardSize is the largest valid shard: a chunk of chunk.MaxSize with M=1.
const MaxShardSize = HeaderSize + chunk.MaxSize

// Sentinel errors.
var (
	// ErrBadShard means bytes are not a well-formed shard (header or length).
	ErrBadShard = errors.New("bad shard")
	// ErrTooFewShards means fewer than M valid shards of a chunk could be
	// read. Errors that wrap it also wrap store.ErrNotFound.
	ErrTooFewShards = errors.New("too few shards")
	// ErrNoNodes means the client has no fleet nodes to ask. It reports
	// Unreachable() == true (see unreachable.go).
	ErrNoNodes error = noNodesError{}
)

// ShardHeader is the decoded header of one shard.
type ShardHeader struct {
	M, K   int
	Index  int
	Length int
	Name   chunk.Name
}

// payloadSize is the payload length every shard of this chunk has.
func (h ShardHeader) payloadSize() int { return (h.Length + h.M - 1) / h.M }

func (h ShardHeader) put(b []byte) {
	copy(b[0:4], shardMagic)
	b[4] = shardVersion
	b[5] = byte(h.M)
	b[6] = byte(h.K)
	b[7] = byte(h.Index)
	binary.BigEndian.PutUint32(b[8:12], uint32(h.Length))
	copy(b[12:44], h.Name[:])
}

// ParseShard decodes and checks a shard's header and its total length. It
// does not (cannot) check the payload: only the rebuilt chunk's name can.
func ParseShard(b []byte) (ShardHeader, []byte, error) {
	h, err := parseHeader(b)
	if err != nil {
		return h, nil, err
	}
	if err := h.checkSize(int64(len(b))); err != nil {
		return h, nil, err
	}
	return h, b[HeaderSize:], nil
}

// parseHeader decodes and checks the header at the start of b (the payload
// need not follow: a node checks a shard file's header without reading the
// payload).
func parseHeader(b []byte) (ShardHeader, error) {
	var h ShardHeader
	if len(b) < HeaderSize {
		return h, fmt.Errorf("shard of %d bytes shorter than its %d-byte header: %w", len(b), HeaderSize, ErrBadShard)
	}
	if string(b[0:4]) != shardMagic {
		return h, fmt.Errorf("shard magic %q: %w", b[0:4], ErrBadShard)
	}
	if b[4] != shardVersion {
		return h, fmt.Errorf("shard version %d, want %d: %w", b[4], shardVersion, ErrBadShard)
	}
	h.M, h.K, h.Index = int(b[5]), int(b[6]), int(b[7])
	h.Length = int(binary.BigEndian.Uint32(b[8:12]))
	copy(h.Name[:], b[12:44])
	if err := h.validate(); err != nil {
		return h, err
	}
	return h, nil
}

// checkSize checks that a whole shard (header and payload) of size bytes
// has the payload length its header implies.
func (h ShardHeader) checkSize(size int64) error {
	if p := size - HeaderSize; p != int64(h.payloadSize()) {
		return fmt.Errorf("shard %d of chunk %s: payload %d bytes, want %d: %w", h.Index, h.Name, p, h.payloadSize(), ErrBadShard)
	}
	return nil
}

func (h ShardHeader) validate() error {
	switch {
	case h.M < 1 || h.M > MaxShards || h.K < h.M || h.K > MaxShards:
		return fmt.Errorf("shard code %d-of-%d: %w", h.M, h.K, ErrBadShard)
	case h.Index < 0 || h.Index >= h.K:
		return fmt.Errorf("shard index %d of %d: %w", h.Index, h.K, ErrBadShard)
	case h.Length < 1 || h.Length > chunk.MaxSize:
		return fmt.Errorf("shard chunk length %d: %w", h.Length, ErrBadShard)
	}
	return nil
}

// codec splits chunks into shards and rebuilds them for one M-of-K code. It
// is safe for concurrent use (reedsolomon encoders are).
type codec struct {
	m, k int
	enc  reedsolomon.Encoder
}

func newCodec(m, k int) (*codec, error) {
	if m < 1 || k < m || k > MaxShards {
		return nil, fmt.Errorf("erasure code %d-of-%d: need 1 ≤ M ≤ K ≤ %d", m, k, MaxShards)
	}
	enc, err := reedsolomon.New(m, k-m)
	if err != nil {
		return nil, fmt.Errorf("creating %d-of-%d Reed–Solomon encoder: %w", m, k, err)
	}
	return &codec{m: m, k: k, enc: enc}, nil
}

// encode returns the K shards (header + payload) of ciphertext named n. All
// shards share one allocation; ciphertext is not retained.
func (c *codec) encode(n chunk.Name, ciphertext []byte) ([][]byte, error) {
	if len(ciphertext) < 1 || len(ciphertext) > chunk.MaxSize {
		return nil, fmt.Errorf("encoding chunk %s of %d bytes: length must be 1..%d", n, len(ciphertext), chunk.MaxSize)
	}
	h := ShardHeader{M: c.m, K: c.k, Length: len(ciphertext), Name: n}
	per := h.payloadSize()
	buf := make([]byte, c.k*(HeaderSize+per))
	shards := make([][]byte, c.k)
	payloads := make([][]byte, c.k)
	rest := ciphertext
	for i := range shards {
		s := buf[i*(HeaderSize+per) : (i+1)*(HeaderSize+per) : (i+1)*(HeaderSize+per)]
		h.Index = i
		h.put(s)
		shards[i], payloads[i] = s, s[HeaderSize:]
		if i < c.m {
			rest = rest[copy(payloads[i], rest):] // tail stays zero: padding
		}
	}
	if err := c.enc.Encode(payloads); err != nil {
		return nil, fmt.Errorf("encoding chunk %s: %w", n, err)
	}
	return shards, nil
}

// rebuild reconstructs the chunk from exactly the payloads that are non-nil
// (at least M of them, all of payloadSize bytes) into dst (reused when large
// enough) and verifies its name. A *chunk.CorruptError means some shard in
// the set is corrupt.
func (c *codec) rebuild(h ShardHeader, payloads [][]byte, dst []byte) ([]byte, error) {
	set := make([][]byte, c.k)
	copy(set, payloads)
	// A missing data shard is rebuilt into a pooled buffer (Reed–Solomon
	// uses a zero-length shard's capacity) instead of a fresh allocation.
	per := h.payloadSize()
	var lent []*[]byte
	defer func() {
		for _, bp := range lent {
			putBody(bp)
		}
	}()
	for i := 0; i < c.m; i++ {
		if set[i] == nil {
			bp := getBody(per)
			lent = append(lent, bp)
			set[i] = (*bp)[:0]
		}
	}
	if err := c.enc.ReconstructData(set); err != nil {
		return nil, fmt.Errorf("reconstructing chunk %s: %w", h.Name, err)
	}
	if cap(dst) >= h.Length {
		dst = dst[:h.Length]
	} else {
		dst = make([]byte, h.Length)
	}
	rest := dst
	for i := 0; i < c.m && len(rest) > 0; i++ {
		rest = rest[copy(rest, set[i]):]
	}
	if err := chunk.Verify(h.Name, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// SplitShards cuts a concatenation of shards (a node's answer to
// GET /v1/shards/{chunk}) into shards, using each header's length. Only the
// framing is checked here; ParseShard checks each shard.
func SplitShards(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		if len(out) == MaxShards {
			return nil, fmt.Errorf("more than %d shards in one answer: %w", MaxShards, ErrBadShard)
		}
		if len(b) < HeaderSize {
			return nil, fmt.Errorf("trailing %d bytes shorter than a shard header: %w", len(b), ErrBadShard)
		}
		h := ShardHeader{M: int(b[5]), Length: int(binary.BigEndian.Uint32(b[8:12]))}
		if h.M < 1 || h.Length < 1 || h.Length > chunk.MaxSize {
			return nil, fmt.Errorf("shard framing (M %d, length %d): %w", h.M, h.Length, ErrBadShard)
		}
		size := HeaderSize + h.payloadSize()
		if size > len(b) {
			return nil, fmt.Errorf("shard of %d bytes in %d remaining: %w", size, len(b), ErrBadShard)
		}
		out = append(out, b[:size:size])
		b = b[size:]
	}
	return out, nil
}
