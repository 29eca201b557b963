package cachenode

import "encoding/binary"

// freqSketch estimates how often each shard was asked for recently: a
// count-min sketch of 4 rows of 8-bit counters, halved ("aged") every
// sample accesses, as TinyLFU keeps it (Einziger, Friedman, Manes: "TinyLFU:
// A Highly Efficient Cache Admission Policy", 2017). The node store uses it
// to admit a shard into the disk tier only if it was asked for more often
// than the shard it would evict (nodeStore.admitDiskLocked).
//
// Written by hand: the Go caches that implement W-TinyLFU (ristretto, otter)
// own their entries and their eviction, while here a memory eviction is a
// demotion to a second, file-backed tier under its own byte budget, and both
// tiers consult one frequency estimate. The sketch is the only piece needed,
// and it is 60 lines.
type freqSketch struct {
	rows   [4][]uint8
	mask   uint64
	adds   int
	sample int // adds between agings
}

// newFreqSketch sizes the sketch for about entries live keys (at least 1024
// counters a row).
func newFreqSketch(entries int) *freqSketch {
	w := 1024
	for w < 4*entries && w < 1<<22 {
		w <<= 1
	}
	f := &freqSketch{mask: uint64(w - 1), sample: 10 * w / 4}
	for i := range f.rows {
		f.rows[i] = make([]uint8, w)
	}
	return f
}

// hashes returns two independent 64-bit hashes of k: the chunk name is
// already a SHA-256, so its bytes are uniformly distributed.
func sketchHashes(k shardKey) (uint64, uint64) {
	h1 := binary.LittleEndian.Uint64(k.name[0:8]) ^ uint64(k.idx)*0x9e3779b97f4a7c15
	h2 := binary.LittleEndian.Uint64(k.name[8:16]) | 1
	return h1, h2
}

// add records one access of k.
func (f *freqSketch) add(k shardKey) {
	h1, h2 := sketchHashes(k)
	for i := range f.rows {
		c := &f.rows[i][(h1+uint64(i)*h2)&f.mask]
		if *c < 255 {
			*c++
		}
	}
	f.adds++
	if f.adds >= f.sample {
		f.age()
	}
}

// estimate returns k's estimated recent access count.
func (f *freqSketch) estimate(k shardKey) int {
	h1, h2 := sketchHashes(k)
	m := 255
	for i := range f.rows {
		m = min(m, int(f.rows[i][(h1+uint64(i)*h2)&f.mask]))
	}
	return m
}

// age halves every counter, so that the sketch follows what is popular now.
func (f *freqSketch) age() {
	for i := range f.rows {
		for j, c := range f.rows[i] {
			f.rows[i][j] = c >> 1
		}
	}
	f.adds /= 2
}
