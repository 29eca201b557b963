package fleetproto

import (
	"encoding/binary"
	"errors"
	"fmt"

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
)

// ShardHeader is the decoded header of one shard.
type ShardHeader struct {
	M, K   int
	Index  int
	Length int
	Name   chunk.Name
}

// PayloadSize is the payload length every shard of this chunk has.
func (h ShardHeader) PayloadSize() int { return (h.Length + h.M - 1) / h.M }

// Put writes h into the first HeaderSize bytes of b.
func (h ShardHeader) Put(b []byte) {
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
	h, err := ParseHeader(b)
	if err != nil {
		return h, nil, err
	}
	if err := h.CheckSize(int64(len(b))); err != nil {
		return h, nil, err
	}
	return h, b[HeaderSize:], nil
}

// ParseHeader decodes and checks the header at the start of b (the payload
// need not follow: a node checks a shard file's header without reading the
// payload).
func ParseHeader(b []byte) (ShardHeader, error) {
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

// CheckSize checks that a whole shard (header and payload) of size bytes
// has the payload length its header implies.
func (h ShardHeader) CheckSize(size int64) error {
	if p := size - HeaderSize; p != int64(h.PayloadSize()) {
		return fmt.Errorf("shard %d of chunk %s: payload %d bytes, want %d: %w", h.Index, h.Name, p, h.PayloadSize(), ErrBadShard)
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
		size := HeaderSize + h.PayloadSize()
		if size > len(b) {
			return nil, fmt.Errorf("shard of %d bytes in %d remaining: %w", size, len(b), ErrBadShard)
		}
		out = append(out, b[:size:size])
		b = b[size:]
	}
	return out, nil
}
