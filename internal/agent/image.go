package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/trace"
)

// Image is a read-only view of one image's filesystem bytes, assembled from
// its chunks on demand. It satisfies blockdev.Device. It is safe for
// concurrent use.
type Image struct {
	name      string
	m         *manifest.Manifest
	a         *Agent
	ownsAgent bool
	size      int64
	cs        int64 // chunk size

	// Read-ahead state. raMu also orders wg.Add against Close.
	raMu   sync.Mutex
	closed bool
	raNext int          // first chunk read-ahead has not yet considered
	raSet  bitmap       // chunks read-ahead fetched
	last   atomic.Int64 // last chunk a reader touched; -2 before any
	run    atomic.Int64 // reads in a row that moved the stream on
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // read-ahead goroutines
	isShut atomic.Bool
	zstd   bool // chunks are zstd frames: memory-cache keys differ (cacheRef)
	// starting: the image's reads are a container start's (SetStarting).
	starting atomic.Bool
	// yield: Prefetch starts no fetch while a read is in progress
	// (SetPrefetchYield).
	yield atomic.Bool
	// readHook, if set, is told of every read (SetReadHook).
	readHook atomic.Pointer[func(first, last int)]

	orderMu sync.Mutex
	order   []uint32 // non-hole chunks in the order readers first touched them

	// Demand activity, for the background fill (fill.go): reads in progress
	// and a count of every read begun.
	demandActive, demandSeq atomic.Int64

	st imageStats
}

type imageStats struct {
	bytesRead, memHits, holes, fetchErrors, verifyFails, readAheads atomic.Int64
	prefetches, filled, filledBytes                                 atomic.Int64
	distinctChunks, distinctBytes                                   atomic.Int64
	read                                                            bitmap
	tiers                                                           []tierCounts
}

type tierCounts struct {
	hits, bytes, chunks atomic.Int64
	seen                bitmap
}

// bitmap is a set of chunk indexes safe for concurrent use.
type bitmap []atomic.Uint64

func newBitmap(n int) bitmap { return make(bitmap, (n+63)/64) }

// set adds i and reports whether it was new.
func (b bitmap) set(i int) bool {
	bit := uint64(1) << (i % 64)
	return b[i/64].Or(bit)&bit == 0
}

func newImage(a *Agent, owns bool, name string, m *manifest.Manifest) (*Image, error) {
	if err := validManifest(m); err != nil {
		return nil, fmt.Errorf("opening image %s: %w", name, err)
	}
	im := &Image{name: name, m: m, a: a, ownsAgent: owns, size: m.ImageSize, cs: int64(m.ChunkSize),
		zstd: m.Compression == manifest.CompressionZstd}
	im.last.Store(-2)
	im.ctx, im.cancel = context.WithCancel(context.Background())
	n := len(m.Names)
	im.st.read = newBitmap(n)
	im.raSet = newBitmap(n)
	im.st.tiers = make([]tierCounts, len(a.tiers))
	for i := range im.st.tiers {
		im.st.tiers[i].seen = newBitmap(n)
	}
	return im, nil
}

func validManifest(m *manifest.Manifest) error {
	if m == nil {
		return errors.New("nil manifest")
	}
	if err := chunk.ValidSize(m.ChunkSize); err != nil {
		return err
	}
	if m.ImageSize < 0 {
		return fmt.Errorf("image size %d is negative", m.ImageSize)
	}
	if want := chunk.Count(m.ImageSize, m.ChunkSize); len(m.Names) != want {
		return fmt.Errorf("manifest has %d chunk names, image of %d bytes needs %d", len(m.Names), m.ImageSize, want)
	}
	if len(m.Keys) != len(m.Names) {
		return fmt.Errorf("manifest has %d chunk keys for %d names", len(m.Keys), len(m.Names))
	}
	if m.Compression != manifest.CompressionNone && m.Compression != manifest.CompressionZstd {
		return fmt.Errorf("chunk compression %d is not supported", m.Compression)
	}
	return nil
}

// Name returns the image's name as given to Open.
func (im *Image) Name() string { return im.name }

// Size returns the image's size in bytes.
func (im *Image) Size() int64 { return im.size }

// chunkLen returns the plaintext length of chunk i.
func (im *Image) chunkLen(i int) int {
	return int(min(im.cs, im.size-int64(i)*im.cs))
}

// ReadAt fills p with the image's bytes from off. It returns len(p), or fewer
// only when the image ends first (then with io.EOF). On error it returns 0
// and an error wrapping ErrIO and the cause, naming the image and chunk; no
// byte of p is meaningful then. Chunks spanned by p are fetched in parallel.
//
// A panic anywhere in the read (a bug reached by a crafted manifest or
// chunk) fails only this read: it is recovered, logged with its stack,
// counted (lode_agent_read_panics_total) and returned as an error wrapping
// ErrIO and ErrPanic, so one image cannot stop a process serving others.
func (im *Image) ReadAt(ctx context.Context, p []byte, off int64) (n int, err error) {
	defer im.a.recoverRead(im.name, off, &n, &err)
	// The agent's context ends when the agent is closed: after that no read
	// is served, not even from the memory cache.
	if im.isShut.Load() || im.a.ctx.Err() != nil {
		return 0, fmt.Errorf("reading image %s: %w: %w", im.name, ErrIO, ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("reading image %s at offset %d: negative offset: %w", im.name, off, ErrIO)
	}
	if off >= im.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	end := off + int64(len(p))
	eof := false
	if end > im.size {
		end, eof = im.size, true
	}
	if end == off {
		return 0, nil
	}
	im.demandSeq.Add(1)
	im.demandActive.Add(1)
	defer im.demandActive.Add(-1)
	n = int(end - off)
	first, last := int(off/im.cs), int((end-1)/im.cs)
	var rt *readTrace
	if tr := im.a.cfg.Trace; tr != nil {
		rt = &readTrace{id: tr.NextID(), off: off, len: int64(n), asked: tr.Now()}
		defer im.traceRead(rt, first, last)
	}
	var fromMem bool
	if first == last {
		fromMem, err = im.readChunk(ctx, first, p[:n], int(off-int64(first)*im.cs), rt)
	} else {
		fromMem, err = im.readSpan(ctx, p[:n], off, first, last, rt)
	}
	if err != nil {
		return 0, err
	}
	im.st.bytesRead.Add(int64(n))
	add(im.a.am.readBytes, n)
	if h := im.readHook.Load(); h != nil {
		(*h)(first, last)
	}
	im.readAhead(first, last, fromMem, rt)
	if eof {
		return n, io.EOF
	}
	return n, nil
}

// readTrace is what the fetch trace records of one read (nil when the
// agent does not trace).
type readTrace struct {
	id       uint64
	off, len int64
	asked    int64
	waited   []uint64 // fetches the read blocked on
}

// traceRead records the read rt of chunks first..last, complete.
func (im *Image) traceRead(rt *readTrace, first, last int) {
	tr := im.a.cfg.Trace
	tr.Emit(trace.Event{Kind: trace.KindRead, ID: rt.id, Image: im.name, Chunk: first, Off: rt.off, Len: rt.len,
		First: first, Last: last, Asked: rt.asked, Done: tr.Now(), Waited: rt.waited})
}

// readChunk fills dst from chunk i starting at within. fromMem reports
// that the memory cache served it (not a hole, not a fetch).
func (im *Image) readChunk(ctx context.Context, i int, dst []byte, within int, rt *readTrace) (fromMem bool, err error) {
	plain, c, err := im.start(i, rt)
	if err != nil || plain != nil || c == nil {
		if err == nil {
			copyChunk(dst, plain, within)
		}
		return plain != nil, err
	}
	if err := im.finish(ctx, i, c); err != nil {
		return false, err
	}
	copyChunk(dst, c.plain, within)
	return false, nil
}

// copyChunk copies plain[within:] into dst, or zeros for a hole (nil plain).
func copyChunk(dst, plain []byte, within int) {
	if plain == nil {
		clear(dst)
		return
	}
	copy(dst, plain[within:])
}

// readSpan fills p (which starts at off) from chunks first..last: cached
// chunks and holes at once, then it starts every missing chunk's fetch
// before waiting for any, so they run in parallel. fromMem reports that the
// memory cache served every chunk.
func (im *Image) readSpan(ctx context.Context, p []byte, off int64, first, last int, rt *readTrace) (fromMem bool, err error) {
	fromMem = true
	var buf [8]pending
	waits := buf[:0]
	for i := first; i <= last; i++ {
		cStart := int64(i) * im.cs
		lo, hi := max(cStart, off), min(cStart+int64(im.chunkLen(i)), off+int64(len(p)))
		dst, within := p[lo-off:hi-off], int(lo-cStart)
		plain, c, err := im.start(i, rt)
		if err != nil {
			for _, w := range waits {
				im.a.leave(w.c)
			}
			return false, err
		}
		if c == nil {
			fromMem = fromMem && plain != nil
			copyChunk(dst, plain, within)
			continue
		}
		fromMem = false
		waits = append(waits, pending{i, c, dst, within})
	}
	for k, w := range waits {
		if err := im.finish(ctx, w.i, w.c); err != nil {
			for _, r := range waits[k+1:] {
				im.a.leave(r.c)
			}
			return false, err
		}
		copyChunk(w.dst, w.c.plain, w.within)
	}
	return fromMem, nil
}

// pending is a chunk of a span read whose fetch is in flight.
type pending struct {
	i      int
	c      *call
	dst    []byte
	within int
}

// start begins reading chunk i: a hole returns (nil, nil, nil), a memory
// hit its plaintext, a miss the fetch to wait for. rt is the read's trace
// (nil when not tracing).
func (im *Image) start(i int, rt *readTrace) ([]byte, *call, error) {
	if im.st.read.set(i) {
		im.st.distinctChunks.Add(1)
		if !im.m.Names[i].IsZero() {
			im.st.distinctBytes.Add(int64(im.chunkLen(i)))
			im.orderMu.Lock()
			im.order = append(im.order, uint32(i))
			im.orderMu.Unlock()
		}
	}
	ref := im.m.Ref(i)
	if ref.IsHole() {
		im.st.holes.Add(1)
		inc(im.a.am.holeReads)
		return nil, nil, nil
	}
	a := im.a
	if a.cfg.Mem != nil {
		var plain []byte
		var ok bool
		key := cacheRef(ref, im.zstd)
		if a.memM.seconds != nil {
			t0 := a.cfg.Now()
			plain, ok = a.cfg.Mem.Get(key)
			a.memM.seconds.Observe(a.cfg.Now().Sub(t0).Seconds())
		} else {
			plain, ok = a.cfg.Mem.Get(key)
		}
		if ok {
			if err := im.checkLen(i, ref, plain); err != nil {
				return nil, nil, err
			}
			im.memHit(plain)
			return plain, nil, nil
		}
		inc(a.memM.miss)
	}
	var cause trace.Cause
	if rt != nil {
		cause = trace.Cause{Chunk: i, Why: trace.WhyRead, Read: rt.id}
	}
	c, plain, _ := a.join(ref, im.chunkLen(i), im, false, false, cause, rt)
	if plain != nil {
		if err := im.checkLen(i, ref, plain); err != nil {
			return nil, nil, err
		}
		im.memHit(plain)
		return plain, nil, nil
	}
	if c == nil {
		return nil, nil, im.fail(i, fmt.Errorf("%w: %w", ErrIO, ErrClosed))
	}
	if rt != nil && c.tr != nil {
		rt.waited = append(rt.waited, c.tr.id)
	}
	return nil, c, nil
}

// checkLen fails the read of chunk i when plain, its plaintext from the
// memory cache, is not as long as this image's manifest says. The cache is
// keyed by name and key only, so another image (another tenant's, or a
// crafted manifest that opens with a valid key) may have put the same chunk
// there at another chunk size: its bytes are authentic, but slicing them at
// this image's offsets would run past their end (issue #19).
func (im *Image) checkLen(i int, ref chunk.Ref, plain []byte) error {
	if len(plain) == im.chunkLen(i) {
		return nil
	}
	return im.fail(i, fmt.Errorf("%w: %w", ErrIO, &chunk.CorruptError{Name: ref.Name,
		Reason: fmt.Sprintf("cached plaintext is %d bytes, the manifest says %d", len(plain), im.chunkLen(i))}))
}

func (im *Image) memHit(plain []byte) {
	im.st.memHits.Add(1)
	inc(im.a.memM.hit)
	add(im.a.memM.bytes, len(plain))
}

// finish waits for c, the fetch of chunk i, and checks its result.
func (im *Image) finish(ctx context.Context, i int, c *call) error {
	if err := im.a.wait(ctx, c); err != nil {
		return im.fail(i, fmt.Errorf("%w: %w", ErrIO, err))
	}
	im.credit(c, i)
	if c.err != nil {
		return im.fail(i, c.err)
	}
	if len(c.plain) != im.chunkLen(i) {
		return im.fail(i, fmt.Errorf("%w: %w", ErrIO, &chunk.CorruptError{Name: c.ref.Name,
			Reason: fmt.Sprintf("plaintext is %d bytes, the manifest says %d", len(c.plain), im.chunkLen(i))}))
	}
	return nil
}

// fail counts a failed read of chunk i and names it (index, chunk, image)
// in err. It does not log: the caller that handles the failure does, once
// (a frontend turning it into EIO, the fill, the prefetch), and the tiers'
// own failures are logged by the agent as it moves to the next tier.
func (im *Image) fail(i int, err error) error {
	im.st.fetchErrors.Add(1)
	inc(im.a.am.readErrors)
	return fmt.Errorf("reading chunk %d (%s) of image %s: %w", i, im.m.Names[i], im.name, err)
}

// credit adds c's outcome to the image's statistics, once per fetch however
// many of the image's readers waited for it.
func (im *Image) credit(c *call, i int) {
	a := im.a
	a.mu.Lock()
	for _, x := range c.credited {
		if x == im {
			a.mu.Unlock()
			return
		}
	}
	c.credited = append(c.credited, im)
	a.mu.Unlock()
	im.st.verifyFails.Add(int64(c.verifyFails))
	if c.tier >= 0 {
		t := &im.st.tiers[c.tier]
		t.hits.Add(1)
		t.bytes.Add(int64(c.ctLen))
		if t.seen.set(i) {
			t.chunks.Add(1)
		}
	}
}

// readAhead notes a read of chunks first..last and, when it continues the
// previous read, starts fetching the next ReadAhead chunks that are neither
// holes, cached, nor in flight. It never waits for a fetch slot: when none is
// free it stops and tries again on the next sequential read.
//
// A read that the memory cache served whole (fromMem) moves a stream on
// only if read-ahead fetched one of its chunks: a read of chunks something else put
// in the cache — the start set or a profile the worker prefetched, another
// image's reads — says nothing about what comes after them. (Measured on a
// cold python3 start with the build-time start set: every read-ahead chunk
// was past the end of a prefetched file, 4–6 MiB fetched for nothing;
// docs/coldstart.md.)
func (im *Image) readAhead(first, last int, fromMem bool, rt *readTrace) {
	ra := im.a.cfg.ReadAhead
	// The kernel sends a sequential stream as several concurrent requests
	// (loop device, FUSE, overlayfs), so they arrive slightly out of order: a
	// request that starts at most ra chunks behind the stream's position
	// belongs to the stream and does not move it back.
	var prev int64
	for {
		prev = im.last.Load()
		next := int64(last)
		if next < prev && next >= prev-int64(ra) {
			next = prev
		}
		if im.last.CompareAndSwap(prev, next) {
			break
		}
	}
	// Only a read that reaches past the stream's position, starting at most
	// one chunk after it (or a little behind it, reordered), moves the
	// stream on and fetches ahead; a read again inside the chunks the
	// stream has reached (a boot re-reading metadata) fetches nothing more.
	if ra <= 0 {
		return
	}
	switch {
	case int64(first) < prev-int64(ra) || int64(first) > prev+1+int64(ra):
		im.run.Store(0) // a jump: a new stream, or none
		return
	case int64(first) > prev+1:
		return // a little ahead: a reordered request of the stream; wait for the rest
	}
	// Like the kernel's, read-ahead starts on the second read in a row that
	// moves the stream on: one step to a neighbouring chunk is as likely a
	// scattered read (a VM's boot walking metadata) as the start of a stream.
	if int64(last) <= prev || (fromMem && !im.raOwns(first, last)) || im.run.Add(1) < 2 {
		return
	}
	im.raMu.Lock()
	defer im.raMu.Unlock()
	if im.closed {
		return
	}
	stop := min(last+ra, len(im.m.Names)-1)
	// Skip what this stream already scheduled, but not what an earlier
	// stream elsewhere in the image did.
	start := last + 1
	if im.raNext > start && im.raNext <= stop+1 {
		start = im.raNext
	}
	for j := start; j <= stop; j++ {
		ref := im.m.Ref(j)
		if !ref.IsHole() && (im.a.cfg.Mem == nil || !im.a.cfg.Mem.Contains(cacheRef(ref, im.zstd))) {
			var cause trace.Cause
			if rt != nil {
				cause = trace.Cause{Chunk: j, Why: trace.WhyReadAhead, Read: rt.id}
			}
			c, _, full := im.a.join(ref, im.chunkLen(j), im, true, false, cause, nil)
			if full {
				return
			}
			if c != nil {
				im.raSet.set(j)
				im.st.readAheads.Add(1)
				inc(im.a.am.readAhead)
				im.wg.Add(1)
				go im.prefetch(c, j)
			}
		}
		im.raNext = j + 1
	}
}

// raOwns reports whether read-ahead fetched any of chunks first..last.
func (im *Image) raOwns(first, last int) bool {
	for i := first; i <= last; i++ {
		if im.raSet.has(i) {
			return true
		}
	}
	return false
}

// prefetch waits for read-ahead fetch c of chunk j; Close cancels it.
func (im *Image) prefetch(c *call, j int) {
	defer im.wg.Done()
	if err := im.a.wait(im.ctx, c); err == nil {
		im.credit(c, j)
	}
}

// SetReadHook sets f to be called after every successful ReadAt with the
// indexes of the first and last chunk it read (the worker's expired-root
// alarm, internal/worker/rootwatch.go). f runs on the read's goroutine and
// must not block; nil removes the hook.
func (im *Image) SetReadHook(f func(first, last int)) {
	if f == nil {
		im.readHook.Store(nil)
		return
	}
	im.readHook.Store(&f)
}

// waitReads waits, polling every poll, until no read of the image is in
// progress (SetPrefetchYield) or ctx ends.
func (im *Image) waitReads(ctx context.Context, poll time.Duration) error {
	for im.demandActive.Load() > 0 {
		t := time.NewTimer(poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	return nil
}

// SetStarting marks the image's reads as a container start's (on) or as a
// running container's (off, the default). While on, the image's demand
// fetches may use at most three quarters of the agent's fetch slots
// (Config.MaxConcurrentFetches), so a storm of starts sharing the agent
// cannot take every slot from the reads of containers already running
// (issue #12). A fetch already joined by a running image's reader keeps the
// class it started with.
func (im *Image) SetStarting(on bool) { im.starting.Store(on) }

// SetPrefetchYield makes Prefetch yield to the image's own reads (on): it
// starts its next fetch only when no read of the image is in progress, so
// a read that missed the caches is never queued behind prefetch fetches for
// the origin's bandwidth and the CPU that opens chunks. For an origin on
// local disk (the worker sets it), where a fetch costs bandwidth and CPU
// rather than a round trip; over a remote store the prefetch's parallelism
// is what cuts the serial chain, and it must not wait. Fetches already in
// flight go on; the background fill has its own pressure rule (fill.go).
func (im *Image) SetPrefetchYield(on bool) { im.yield.Store(on) }

// PrefetchYields reports whether Prefetch yields to reads (SetPrefetchYield).
func (im *Image) PrefetchYields() bool { return im.yield.Load() }

// Close cancels read-ahead and waits for it; reads fail afterwards. An
// image from NewImage closes its agent too.
func (im *Image) Close() error {
	im.isShut.Store(true)
	im.raMu.Lock()
	im.closed = true
	im.raMu.Unlock()
	im.cancel()
	im.wg.Wait()
	if im.ownsAgent {
		return im.a.Close()
	}
	return nil
}

// TierStats is what one tier served one image.
type TierStats struct {
	Tier   string // the Tier's Name
	Hits   int64  // chunk fetches it served (read-ahead included)
	Chunks int64  // distinct chunks (by index) it served
	Bytes  int64  // ciphertext bytes it served
}

// Stats is a snapshot of one image's reads.
type Stats struct {
	ImageSize          int64
	ChunkCount         int              // chunks in the image, holes included
	Tiers              []TierStats      // in the agent's tier order
	MemHits            int64            // chunk reads served by the memory cache
	Holes              int64            // chunk reads served as zeros from a hole
	DistinctChunksRead int64            // distinct chunks (holes included) readers touched
	DistinctBytesRead  int64            // plaintext bytes of the distinct non-hole chunks readers touched
	BytesRead          int64            // bytes returned to readers
	ReadAheads         int64            // fetches started by read-ahead
	Prefetches         int64            // fetches started by Prefetch (startup hints)
	FetchErrors        int64            // chunk reads that failed
	VerifyFailures     int64            // chunks a tier served that failed verification
	Degraded           map[string]int64 // degraded fetches by reason (degraded.go); nil when none
	Filled             int64            // chunks the background fill fetched (fill.go)
}

// ShareRead is the fraction of the image's bytes held in the non-hole chunks
// that readers touched: DistinctBytesRead / ImageSize (the paper's
// "sparsity" measure; about 6.4% for a typical container start).
func (s Stats) ShareRead() float64 {
	if s.ImageSize == 0 {
		return 0
	}
	return float64(s.DistinctBytesRead) / float64(s.ImageSize)
}

// Stats returns a snapshot of the image's statistics.
func (im *Image) Stats() Stats {
	s := Stats{
		ImageSize:          im.size,
		ChunkCount:         len(im.m.Names),
		MemHits:            im.st.memHits.Load(),
		Holes:              im.st.holes.Load(),
		DistinctChunksRead: im.st.distinctChunks.Load(),
		DistinctBytesRead:  im.st.distinctBytes.Load(),
		BytesRead:          im.st.bytesRead.Load(),
		ReadAheads:         im.st.readAheads.Load(),
		Prefetches:         im.st.prefetches.Load(),
		FetchErrors:        im.st.fetchErrors.Load(),
		VerifyFailures:     im.st.verifyFails.Load(),
		Degraded:           im.Degraded(),
		Filled:             im.st.filled.Load(),
	}
	for i := range im.st.tiers {
		t := &im.st.tiers[i]
		s.Tiers = append(s.Tiers, TierStats{Tier: im.a.tiers[i].t.Name(), Hits: t.hits.Load(), Chunks: t.chunks.Load(), Bytes: t.bytes.Load()})
	}
	return s
}

// ReadOrder returns the image's non-hole chunks in the order readers first
// touched them (read-ahead and Prefetch fetches are not reads and do not
// count). It is what `lode run --record` stores as manifest.Hints.
func (im *Image) ReadOrder() []uint32 {
	im.orderMu.Lock()
	defer im.orderMu.Unlock()
	return slices.Clone(im.order)
}

// Served values of ChunkTiers beside tier indexes.
const (
	ServedNone = -2 // never read nor fetched for this image (or a hole)
	ServedMem  = -1 // read, but only from the memory cache
)

// ChunkTiers returns, per chunk, the index in Stats().Tiers of the fastest
// tier that served it to this image (read-ahead and prefetch included),
// ServedMem when readers got it only from the memory cache, or ServedNone.
func (im *Image) ChunkTiers() []int {
	out := make([]int, len(im.m.Names))
	for i := range out {
		out[i] = ServedNone
		if im.st.read.has(i) && !im.m.Names[i].IsZero() {
			out[i] = ServedMem
		}
		for t := range im.st.tiers {
			if im.st.tiers[t].seen.has(i) {
				out[i] = t
				break
			}
		}
	}
	return out
}

// has reports whether i is in the set.
func (b bitmap) has(i int) bool { return b[i/64].Load()&(1<<(i%64)) != 0 }

// Prefetch fetches the listed chunks (manifest.Hints: a start's read order)
// through the tiers into the memory cache, in order, with at most parallel
// fetches of its own in flight. It runs at low priority: like read-ahead it
// takes a fetch slot only when one is free beyond the quarter kept for
// demand reads, and otherwise waits and retries, so demand reads are never
// queued behind it; a chunk a reader is already fetching is skipped. Holes,
// cached chunks and indexes out of range are skipped.
//
// It returns when every listed chunk was fetched or skipped, when ctx ends,
// or when the image is closed (Close waits for it), with the number of
// fetches it started; callers usually run it in its own goroutine right
// after opening the image. Fetch errors are not returned: a chunk that failed
// is fetched again, and reported, by the read that needs it.
func (im *Image) Prefetch(ctx context.Context, idx []uint32, parallel int) (int, error) {
	return im.prefetchList(ctx, idx, parallel, false)
}

// prefetchList is Prefetch; with fill the fetches it starts are a background
// fill's (fill.go): counted as such, and kept out of the memory cache when
// the fastest tier (the disk cache) keeps them.
func (im *Image) prefetchList(ctx context.Context, idx []uint32, parallel int, fill bool) (int, error) {
	keeps := fill && im.a.fastTier() != nil
	im.raMu.Lock()
	if im.closed {
		im.raMu.Unlock()
		return 0, fmt.Errorf("prefetching image %s: %w", im.name, ErrClosed)
	}
	im.wg.Add(1)
	im.raMu.Unlock()
	defer im.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(im.ctx, cancel)
	defer stop()

	parallel = max(1, parallel)
	slots := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	started := 0
	const retry = 500 * time.Microsecond
	for k, u := range idx {
		j := int(u)
		if j >= len(im.m.Names) {
			continue
		}
		ref := im.m.Ref(j)
		if ref.IsHole() {
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return started, ctx.Err()
		}
		if !fill && im.yield.Load() {
			if err := im.waitReads(ctx, retry); err != nil {
				<-slots
				return started, err
			}
		}
		for {
			// ctx follows the image's context through context.AfterFunc, on
			// a goroutine of its own: once Close has cancelled the image,
			// the fetch slots its cancelled fetches give back must not start
			// another before ctx has caught up.
			if err := im.ctx.Err(); err != nil {
				<-slots
				return started, err
			}
			if im.a.cfg.Mem != nil && im.a.cfg.Mem.Contains(cacheRef(ref, im.zstd)) {
				<-slots
				break
			}
			cause := trace.Cause{Chunk: j, Why: trace.WhyPrefetch, Hint: k}
			if fill {
				cause.Why = trace.WhyFill
			}
			c, _, full := im.a.join(ref, im.chunkLen(j), im, true, keeps && !im.nearReader(j), cause, nil)
			if c != nil {
				started++
				if !fill {
					im.st.prefetches.Add(1)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-slots }()
					if err := im.a.wait(ctx, c); err == nil {
						im.credit(c, j)
						if fill && c.err == nil {
							im.st.filled.Add(1)
							im.st.filledBytes.Add(int64(len(c.plain)))
							add(im.a.am.fillBytes, len(c.plain))
						}
					}
				}()
				break
			}
			if !full { // in flight already, or the agent is closed
				<-slots
				break
			}
			t := time.NewTimer(retry)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				<-slots
				return started, ctx.Err()
			}
		}
	}
	return started, nil
}
