package agent

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
)

// The warm reserve: plaintext buffers whose pages were written once before
// any start needs them.
//
// A cold start opens tens of chunks into new plaintext buffers (they go to
// the memory cache, so they cannot be recycled), and the first write to a
// page the process has never touched is the expensive part of that: on
// this project's test machine (a Firecracker guest with shadow page
// tables) ~7 µs a 4 KiB page even after MADV_POPULATE_WRITE mapped it, so
// opening a zstd chunk into a new 512 KiB buffer took 1.52 ms against
// 0.46 ms into one already written (BenchmarkOpenZstdColdMemory, /new
// against /warm; on bare metal the first touch costs a page fault, ~1 µs). 47 chunks of a
// cold Python start spent ~45 ms of the daemon's ~150 ms of CPU there.
// A long-lived agent pays that cost ahead of time instead: Warm writes a
// reserve of buffers once at start and again whenever starts have used it
// up and the agent has been quiet for a while, and newPlain hands them
// out. Evicted chunks' memory goes back to Go's heap and is reused
// already written, so steady state needs no more than the reserve.
//
// Reserve buffers are new memory written with zeros, used once each; no
// buffer ever carries one chunk's plaintext to another.

// warmReserve is the process's reserve, nil until Warm runs.
type warmReserve struct {
	size  int         // capacity of every buffer
	ready chan []byte // written, empty buffers
	taken chan struct{}
}

var reserve atomic.Pointer[warmReserve]

// warmQuiet is how long no buffer must have been taken before Warm refills
// the reserve: refilling costs CPU that a burst of starts should keep.
var warmQuiet = 2 * time.Second

// Warm keeps a reserve of about bytes of plaintext buffers for chunks of
// chunkSize (0: chunk.DefaultSize; a reserve buffer serves only a chunk of
// exactly that size, which for a default build is every chunk but an
// image's last) until ctx ends. It fills the reserve at once, then again
// whenever starts took buffers and none was taken for warmQuiet. One
// reserve serves every agent in the process; a second Warm while one runs
// returns at once. Warm blocks: run it on its own goroutine.
func Warm(ctx context.Context, bytes int64, chunkSize int) {
	if chunkSize <= 0 {
		chunkSize = chunk.DefaultSize
	}
	if bytes < int64(chunkSize) {
		return
	}
	n := int(bytes / int64(chunkSize))
	r := &warmReserve{size: chunkSize, ready: make(chan []byte, n), taken: make(chan struct{}, 1)}
	if !reserve.CompareAndSwap(nil, r) {
		return
	}
	defer reserve.CompareAndSwap(r, nil)
	for {
		r.fill(ctx)
		select {
		case <-ctx.Done():
			return
		case <-r.taken:
		}
		// Wait for quiet: a start in progress keeps taking buffers.
		t := time.NewTimer(warmQuiet)
	quiet:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-r.taken:
				t.Reset(warmQuiet)
			case <-t.C:
				break quiet
			}
		}
	}
}

// fill writes new buffers into the reserve until it is full or ctx ends.
func (r *warmReserve) fill(ctx context.Context) {
	for len(r.ready) < cap(r.ready) && ctx.Err() == nil {
		b := allocPlain(r.size)
		touch(b[:r.size])
		select {
		case r.ready <- b:
		default:
			return
		}
	}
}

// touch writes one byte of every page of b (a new, zeroed buffer: the
// bytes stay zero). After allocPlain's madvise the pages are mapped, but
// on a shadow-paged VM only this first access makes them cheap to use;
// mapping first still makes the whole cheaper than faulting page by page.
func touch(b []byte) {
	const page = 4096
	for i := 0; i < len(b); i += page {
		b[i] = 0
	}
}

// takeWarm returns an empty reserve buffer of capacity n, or nil when there
// is no reserve, none of that size, or none left.
func takeWarm(n int) []byte {
	r := reserve.Load()
	if r == nil || r.size != n {
		return nil
	}
	select {
	case b := <-r.ready:
		select {
		case r.taken <- struct{}{}:
		default:
		}
		return b
	default:
		return nil
	}
}

// WarmBuffers is how many buffers the reserve holds now (0 without one).
func WarmBuffers() int {
	if r := reserve.Load(); r != nil {
		return len(r.ready)
	}
	return 0
}

// warmBuffersKept bounds how many recycled buffers of each free list
// WarmFetchBuffers writes ahead: a start's first fetches find them, and
// later ones recycle what the first returned.
const warmBuffersKept = 8

// WarmFetchBuffers writes the buffers the read path recycles between
// fetches (the ciphertext of each fetch in flight, the zstd frame of each
// chunk being opened) for chunks of chunkSize (0: chunk.DefaultSize), up
// to warmBuffersKept of each, so that an agent's first cold start does not
// write them for the first time either. The daemon calls it once at start,
// with Warm.
func (a *Agent) WarmFetchBuffers(chunkSize int) {
	if chunkSize <= 0 {
		chunkSize = chunk.DefaultSize
	}
	n := chunkSize + chunk.Overhead + zstdSlack
	for _, l := range []freeList{a.bufs, frames} {
		for i := 0; i < min(cap(l), warmBuffersKept) && len(l) < cap(l); i++ {
			b := allocPlain(n)
			touch(b[:n])
			l.put(&b)
		}
	}
}
