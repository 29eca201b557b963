package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// stagedImage is the staged ext4 image file as the ext4 writer fills it. It
// records, per chunk, how many writes touched it (gen) and how many bytes
// were written into it (covered), so that chunks can be sealed while the
// image is still being written: a chunk whose every byte was written and
// which the writer has passed is sealed speculatively, and the seal is kept
// only if no write touched the chunk afterwards (its gen is unchanged when
// the image is complete). The ext4 writer lays file data out in stream
// order and writes metadata after it (and the superblock last), so nearly
// every data chunk is sealed during the flatten, on the cores the flatten
// leaves idle; the chunks written or rewritten at the end are sealed then.
// The bytes sealed are always the image's final bytes, so the manifest is
// the same as sealing after the flatten (TestPipelineSameManifest).
type stagedImage struct {
	f  *os.File
	cs int64

	mu      sync.Mutex
	cond    *sync.Cond
	pos     int64 // the file offset (one writer goroutine moves it)
	high    int64 // end of the furthest write
	gen     []int64
	covered []int64
	closed  bool // complete: speculation seals what is left of it, then stops
	aborted bool // no further speculative seals
}

func newStagedImage(f *os.File, chunkSize int) *stagedImage {
	s := &stagedImage{f: f, cs: int64(chunkSize)}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// mark records n bytes written at off. Called after the write returned, so
// a reader that sees the old gen also sees every earlier write's bytes.
func (s *stagedImage) markLocked(off int64, n int) {
	if n <= 0 {
		return
	}
	end := off + int64(n)
	for i := off / s.cs; i*s.cs < end; i++ {
		for int64(len(s.gen)) <= i {
			s.gen = append(s.gen, 0)
			s.covered = append(s.covered, 0)
		}
		s.gen[i]++
		s.covered[i] += min(end, (i+1)*s.cs) - max(off, i*s.cs)
	}
	s.high = max(s.high, end)
	s.cond.Broadcast()
}

func (s *stagedImage) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.mu.Lock()
	s.markLocked(s.pos, n)
	s.pos += int64(n)
	s.mu.Unlock()
	return n, err
}

func (s *stagedImage) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.f.WriteAt(p, off)
	s.mu.Lock()
	s.markLocked(off, n)
	s.mu.Unlock()
	return n, err
}

func (s *stagedImage) Read(p []byte) (int, error) {
	n, err := s.f.Read(p)
	s.mu.Lock()
	s.pos += int64(n)
	s.mu.Unlock()
	return n, err
}

func (s *stagedImage) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }

func (s *stagedImage) Seek(off int64, whence int) (int64, error) {
	n, err := s.f.Seek(off, whence)
	if err == nil {
		s.mu.Lock()
		s.pos = n
		s.mu.Unlock()
	}
	return n, err
}

// close marks the image complete: speculation goes on through the chunks
// written in full, whose bytes are now final, and then stops. Whether a
// chunk is sealed by speculation or by finish no longer depends on how
// fast the writer was.
func (s *stagedImage) close() {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// abort ends speculative sealing (a failed or discarded image).
func (s *stagedImage) abort() {
	s.mu.Lock()
	s.closed, s.aborted = true, true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// await waits until chunk i is complete (every byte written, the writer
// past it) and returns its gen; skip when the writer passed it without
// writing all of it (it is finished at the end); done once aborted, or
// closed and past the last chunk written in full.
func (s *stagedImage) await(i int) (gen int64, skip, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.aborted {
			return 0, false, true
		}
		end := int64(i+1) * s.cs
		if s.high >= end {
			if s.covered[i] >= s.cs {
				return s.gen[i], false, false
			}
			return 0, true, false
		}
		if s.closed {
			return 0, false, true
		}
		s.cond.Wait()
	}
}

// genOf returns chunk i's gen (0: never written).
func (s *stagedImage) genOf(i int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < len(s.gen) {
		return s.gen[i]
	}
	return 0
}

// sealed is one chunk's result.
type sealed struct {
	done bool
	gen  int64 // the image's gen of the chunk when it was read
	hole bool
	ref  chunk.Ref
}

type sealJob struct {
	i    int
	gen  int64
	spec bool // speculative: drop the result if the chunk changed while it was read
}

// chunkSealer seals and stores chunks of one image on o.Uploads workers.
type chunkSealer struct {
	st     store.Store
	s      *chunk.Sealer
	salt   []byte
	root   store.RootID
	img    *stagedImage
	o      Options
	enc    *zstd.Encoder
	batch  store.Batch
	jobs   chan sealJob
	g      *errgroup.Group
	ctx    context.Context // the build's
	gctx   context.Context // the workers', cancelled at the first error
	seen   sync.Map        // chunk.Name → struct{}: the first sealer of a name stores it
	bufs   sync.Pool
	frames sync.Pool

	closeJobs sync.Once

	mu       sync.Mutex
	results  []sealed
	uploaded map[chunk.Name]int64 // names this build stored → ciphertext bytes
	specOK   atomic.Int64
	failed   atomic.Pointer[error]
	inflight sync.WaitGroup // speculative jobs submitted and not yet done
}

func newChunkSealer(ctx context.Context, st store.Store, s *chunk.Sealer, salt []byte, root store.RootID, img *stagedImage, o Options) (*chunkSealer, error) {
	c := &chunkSealer{st: st, s: s, salt: salt, root: root, img: img, o: o,
		jobs: make(chan sealJob, o.Uploads), uploaded: map[chunk.Name]int64{}}
	c.bufs.New = func() any { b := make([]byte, o.ChunkSize+chunk.Overhead); return &b }
	c.frames.New = func() any { b := make([]byte, 0, o.ChunkSize+chunk.Overhead); return &b }
	if o.Compression == manifest.CompressionZstd {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderCRC(false),
			zstd.WithEncoderConcurrency(min(o.Uploads, runtime.GOMAXPROCS(0))), zstd.WithWindowSize(zstdWindow(o.ChunkSize)))
		if err != nil {
			return nil, fmt.Errorf("starting zstd encoder: %w", err)
		}
		c.enc = enc
	}
	if b, ok := st.(store.Batcher); ok {
		c.batch = b.NewBatch()
	}
	c.ctx = ctx
	c.g, c.gctx = errgroup.WithContext(ctx)
	for w := 0; w < o.Uploads; w++ {
		c.g.Go(c.work)
	}
	return c, nil
}

// put stores ct under key unless the store has it; it reports whether this
// call stored it.
func (c *chunkSealer) put(ctx context.Context, key string, ct []byte) (bool, error) {
	if c.batch == nil {
		return putIfMissing(ctx, c.st, key, ct)
	}
	err := c.batch.PutIfAbsent(ctx, key, ct)
	if errors.Is(err, store.ErrExists) {
		return false, nil
	}
	return err == nil, err
}

func (c *chunkSealer) work() error {
	pb := c.bufs.Get().(*[]byte)
	cb := c.frames.Get().(*[]byte)
	fb := c.frames.Get().(*[]byte)
	defer c.bufs.Put(pb)
	defer c.frames.Put(cb)
	defer c.frames.Put(fb)
	for j := range c.jobs {
		err := c.sealOne(j, (*pb)[:c.o.ChunkSize], cb, fb)
		if j.spec {
			c.inflight.Done()
		}
		if err != nil {
			c.failed.CompareAndSwap(nil, &err)
			return err
		}
	}
	return nil
}

// finishErr is finish's error once the workers stopped early: the first
// worker's error, else the build's cancellation.
func (c *chunkSealer) finishErr() error {
	if err := c.err(); err != nil {
		return err
	}
	return c.gctx.Err()
}

// err returns the first worker's error, if any.
func (c *chunkSealer) err() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *chunkSealer) sealOne(j sealJob, buf []byte, cb, fb *[]byte) error {
	off := int64(j.i) * int64(c.o.ChunkSize)
	n, err := c.img.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading chunk %d at offset %d: %w", j.i, off, err)
	}
	plain := buf[:n]
	if j.spec && c.img.genOf(j.i) != j.gen {
		return nil // written again while read: sealed at the end
	}
	r := sealed{done: true, gen: j.gen}
	if chunk.IsZero(plain) {
		r.hole = true // the zero Name and Key mark a hole
	} else {
		in := plain
		if c.enc != nil {
			*fb = c.enc.EncodeAll(plain, (*fb)[:0])
			in = *fb
		}
		ref, ct, err := c.s.Seal(in, c.salt, *cb)
		if err != nil {
			return fmt.Errorf("sealing chunk %d: %w", j.i, err)
		}
		*cb = ct[:0]
		r.ref = ref
		if _, dup := c.seen.LoadOrStore(ref.Name, struct{}{}); !dup {
			uploaded, err := c.put(c.gctx, store.ChunkKey(c.root, ref.Name), ct)
			if err != nil {
				return fmt.Errorf("uploading chunk %d (%s): %w", j.i, ref.Name, err)
			}
			if uploaded {
				c.mu.Lock()
				c.uploaded[ref.Name] = int64(len(ct))
				c.mu.Unlock()
			}
		}
	}
	c.mu.Lock()
	for len(c.results) <= j.i {
		c.results = append(c.results, sealed{})
	}
	// A chunk's regular seal (at the end) wins over a speculative one that
	// finished later.
	if !j.spec || !c.results[j.i].done {
		c.results[j.i] = r
	}
	c.mu.Unlock()
	if !j.spec {
		c.o.Progress.Add(int64(n))
	}
	return nil
}

// submit queues one chunk.
func (c *chunkSealer) submit(j sealJob) error {
	select {
	case c.jobs <- j:
		return nil
	case <-c.gctx.Done():
		return c.gctx.Err()
	}
}

// speculate seals chunks as the image writer completes them, until the
// image is closed or a worker failed.
func (c *chunkSealer) speculate() {
	for i := 0; ; i++ {
		gen, skip, done := c.img.await(i)
		if done {
			return
		}
		if skip {
			continue
		}
		c.inflight.Add(1)
		if c.submit(sealJob{i: i, gen: gen, spec: true}) != nil {
			c.inflight.Done()
			return // a worker failed: finish returns its error
		}
	}
}

// finish seals every chunk of the complete image of size bytes that no
// speculative seal covered, waits for the workers, commits the batch and
// fills m.Names, m.Keys and res's counts.
func (c *chunkSealer) finish(size int64, m *manifest.Manifest, res *Result) error {
	n := chunk.Count(size, c.o.ChunkSize)
	// Let the speculative seals in flight land first, so that none is done
	// twice (release drains what failed workers left queued).
	idle := make(chan struct{})
	go func() { c.inflight.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-c.gctx.Done():
		return c.finishErr()
	}
	c.mu.Lock()
	spec := append([]sealed(nil), c.results...)
	c.mu.Unlock()
	err := func() error {
		defer c.closeJobs.Do(func() { close(c.jobs) })
		for i := 0; i < n; i++ {
			if i < len(spec) && spec[i].done && spec[i].gen == c.img.genOf(i) {
				c.specOK.Add(1)
				c.o.Progress.Add(min(int64(c.o.ChunkSize), size-int64(i)*int64(c.o.ChunkSize)))
				continue
			}
			if err := c.submit(sealJob{i: i}); err != nil {
				return err
			}
		}
		return nil
	}()
	if werr := c.g.Wait(); werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if c.batch != nil {
		// Every chunk is read: empty the staged image first, so that its
		// dirty pages are dropped, not written back by the commit's syncfs
		// when it sits on the store's filesystem (issue #22: 0.15-0.2 s of
		// the default build's wall time writing 232 MiB to be deleted).
		if err := c.img.f.Truncate(0); err != nil {
			return fmt.Errorf("emptying the staged image: %w", err)
		}
		if err := c.batch.Commit(c.ctx); err != nil {
			return fmt.Errorf("storing the chunks of %s/%s: %w", c.o.Tenant, c.o.Name, err)
		}
	}
	m.Names = make([]chunk.Name, n)
	m.Keys = make([]chunk.Key, n)
	used := map[chunk.Name]bool{}
	for i := 0; i < n; i++ {
		r := c.results[i]
		if !r.done {
			return fmt.Errorf("chunk %d of %s/%s was not sealed", i, c.o.Tenant, c.o.Name)
		}
		if r.hole {
			res.Holes++
			continue
		}
		m.Names[i], m.Keys[i] = r.ref.Name, r.ref.Key
		if b, ok := c.uploaded[r.ref.Name]; ok && !used[r.ref.Name] {
			used[r.ref.Name] = true
			res.New++
			res.NewBytes += b
		} else {
			res.Dedup++
		}
	}
	return nil
}

// release stops the workers and frees the encoder and any staged objects
// (after finish, a no-op for the batch). Call it after speculate returned.
func (c *chunkSealer) release() {
	c.closeJobs.Do(func() { close(c.jobs) })
	_ = c.g.Wait()
	for j := range c.jobs { // left by failed workers
		if j.spec {
			c.inflight.Done()
		}
	}
	if c.batch != nil {
		c.batch.Abort()
	}
	if c.enc != nil {
		c.enc.Close()
	}
}

// zstdWindow is the encoder's window for chunks of cs bytes: the smallest
// power of two that holds a chunk (zstd's minimum at least). A frame never
// refers further back than its own chunk, so the frames are the same bytes
// as with the level's default 8 MiB window (checked on every chunk of the
// Debian test image), and each encoder's history buffers shrink to match.
func zstdWindow(cs int) int {
	w := zstd.MinWindowSize
	for w < cs && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}
