package cachefleet

import (
	"fmt"

	"github.com/klauspost/reedsolomon"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
)

// codec splits chunks into shards and rebuilds them for one M-of-K code. It
// is safe for concurrent use (reedsolomon encoders are).
type codec struct {
	m, k int
	enc  reedsolomon.Encoder
}

func newCodec(m, k int) (*codec, error) {
	if m < 1 || k < m || k > fleetproto.MaxShards {
		return nil, fmt.Errorf("erasure code %d-of-%d: need 1 ≤ M ≤ K ≤ %d", m, k, fleetproto.MaxShards)
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
	h := fleetproto.ShardHeader{M: c.m, K: c.k, Length: len(ciphertext), Name: n}
	per := h.PayloadSize()
	buf := make([]byte, c.k*(fleetproto.HeaderSize+per))
	shards := make([][]byte, c.k)
	payloads := make([][]byte, c.k)
	rest := ciphertext
	for i := range shards {
		s := buf[i*(fleetproto.HeaderSize+per) : (i+1)*(fleetproto.HeaderSize+per) : (i+1)*(fleetproto.HeaderSize+per)]
		h.Index = i
		h.Put(s)
		shards[i], payloads[i] = s, s[fleetproto.HeaderSize:]
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
func (c *codec) rebuild(h fleetproto.ShardHeader, payloads [][]byte, dst []byte) ([]byte, error) {
	set := make([][]byte, c.k)
	copy(set, payloads)
	// A missing data shard is rebuilt into a pooled buffer (Reed–Solomon
	// uses a zero-length shard's capacity) instead of a fresh allocation.
	per := h.PayloadSize()
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
