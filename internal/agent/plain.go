package agent

// newPlain returns an empty slice with capacity n for a chunk's plaintext,
// its pages already mapped (prefault).
//
// Every opened chunk is a fresh 512 KiB slice that goes to the memory
// cache, and decrypting or decompressing into it is its first touch: one
// page fault per 4 KiB page. On a virtual machine a fault costs several
// microseconds, so a cold start's 47 chunks took ~6,000 faults, most of
// the daemon's "zstd" CPU (BenchmarkOpenZstd_512K; docs/coldstart.md,
// "Where the local time goes"). Mapping the pages in one madvise call
// (MADV_POPULATE_WRITE, Linux 5.14) saves the fault per page; where it is
// refused, the pages fault in as before. On a VM with shadow page tables
// the first access to each page stays expensive even then (docs/coldstart.md,
// "The third pass"): that is what the warm reserve takes off the start.
//
// A buffer from the warm reserve (Warm), written ahead of time, comes first.
func newPlain(n int) []byte {
	if b := takeWarm(n); b != nil {
		return b
	}
	return allocPlain(n)
}

// allocPlain returns a new empty slice with capacity n, its pages mapped.
func allocPlain(n int) []byte {
	b := make([]byte, 0, n)
	prefault(b[:n])
	return b
}

// freeList keeps up to cap(l) buffers between fetches. Unlike a sync.Pool
// it is not emptied by a garbage collection: a cold start allocates 23 MiB
// of plaintext in a few hundred milliseconds, the collector runs every few
// chunks, and a pool refilled after each collection hands out fresh,
// unmapped buffers (a page fault per 4 KiB again). The bound is the
// fetches in flight, so what it keeps is small.
type freeList chan *[]byte

// get returns an empty buffer with capacity at least n, reused or new
// (newPlain: mapped).
func (l freeList) get(n int) *[]byte {
	select {
	case bp := <-l:
		if cap(*bp) >= n {
			*bp = (*bp)[:0]
			return bp
		}
	default:
	}
	b := allocPlain(n) // not the warm reserve: it is for chunk plaintext
	return &b
}

// put returns bp for reuse, or drops it when the list is full.
func (l freeList) put(bp *[]byte) {
	select {
	case l <- bp:
	default:
	}
}
