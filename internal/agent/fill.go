package agent

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/lode-dev/lode/internal/chunk"
)

// Background fill (issue #9): once a start's burst of reads settles, fetch
// the rest of the image at a bounded rate so that a workload that goes on to
// read most of it is not slower than a full download would have been.

// FillOptions configure Image.Fill. The zero value of each field selects the
// default noted beside it.
type FillOptions struct {
	// After is the quiet period: the fill starts once no read of the image
	// began for this long (default 2s; negative starts at once).
	After time.Duration
	// Start, if not nil, starts the fill as soon as it is closed, quiet or
	// not (lode run closes it at the container's first exec).
	Start <-chan struct{}
	// Rate bounds the fill in plaintext bytes per second (0: unlimited,
	// bounded only by Parallel).
	Rate int64
	// Parallel is the number of fill fetches in flight (default 2).
	Parallel int
	// Batch is the number of chunks fetched between checks for demand
	// pressure and rate tokens (default 16, 8 MiB at the default chunk size).
	Batch int
	// Poll is how often the fill re-checks while it waits (default After/4,
	// at least 1ms, at most 250ms).
	Poll time.Duration
}

// FillResult is what one Fill did.
type FillResult struct {
	Chunks int   // fetches the fill started
	Bytes  int64 // plaintext bytes of those chunks
}

// hasTier is a tier that can say whether it holds a chunk without reading
// it (DiskCache).
type hasTier interface{ Has(chunk.Name) bool }

// Fill fetches every chunk of the image that readers have not read, in
// index order, skipping holes and chunks already in the memory cache or the
// fastest tier when that tier can tell (the disk cache). It waits first for
// the quiet period (or o.Start), then fetches in batches through the
// low-priority path Prefetch uses (never taking the quarter of the fetch
// slots kept for demand reads), and before each batch waits while more than
// half of the agent's fetch slots are busy, i.e. while demand reads (of any
// image) are under pressure. Fetched chunks are written back to the faster
// tiers (the disk cache) but not put in the memory cache, so the fill does
// not flush the hot set — except the chunks just after the last one a reader
// touched (fillWindow), which a streaming reader is about to want; with no
// tier able to keep them (no disk cache) they all go to the memory cache.
//
// It returns when every chunk was considered, when ctx ends (with its
// error) or when the image is closed (ErrClosed). Fetch errors are not
// returned: a chunk that failed is fetched again by the read that needs it.
func (im *Image) Fill(ctx context.Context, o FillOptions) (FillResult, error) {
	var res FillResult
	if o.After == 0 {
		o.After = 2 * time.Second
	}
	if o.Parallel <= 0 {
		o.Parallel = 2
	}
	if o.Batch <= 0 {
		o.Batch = 16
	}
	if o.Poll <= 0 {
		o.Poll = min(max(o.After/4, time.Millisecond), 250*time.Millisecond)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(im.ctx, cancel)
	defer stop()
	closed := func(err error) error {
		if im.isShut.Load() {
			return fmt.Errorf("filling image %s: %w", im.name, ErrClosed)
		}
		return err
	}
	if err := im.waitQuiet(ctx, o); err != nil {
		return res, closed(err)
	}
	var lim *rate.Limiter
	if o.Rate > 0 {
		burst := max(o.Rate, int64(o.Batch)*im.cs)
		lim = rate.NewLimiter(rate.Limit(o.Rate), int(min(burst, 1<<30)))
	}
	fast := im.a.fastTier()
	batch := make([]uint32, 0, o.Batch)
	n := len(im.m.Names)
	for i := 0; i < n || len(batch) > 0; {
		for ; i < n && len(batch) < o.Batch; i++ {
			if im.st.read.has(i) {
				continue
			}
			ref := im.m.Ref(i)
			if ref.IsHole() || (fast != nil && fast.Has(ref.Name)) ||
				(im.a.cfg.Mem != nil && im.a.cfg.Mem.Contains(cacheRef(ref, im.zstd))) {
				continue
			}
			batch = append(batch, uint32(i))
		}
		if len(batch) == 0 {
			break
		}
		if err := im.waitPressure(ctx, o.Poll); err != nil {
			return res, closed(err)
		}
		if lim != nil {
			var bytes int64
			for _, j := range batch {
				bytes += int64(im.chunkLen(int(j)))
			}
			if err := lim.WaitN(ctx, int(min(bytes, int64(lim.Burst())))); err != nil {
				return res, closed(fmt.Errorf("filling image %s: %w", im.name, err))
			}
		}
		before := im.st.filledBytes.Load()
		started, err := im.prefetchList(ctx, batch, o.Parallel, true)
		res.Chunks += started
		res.Bytes += im.st.filledBytes.Load() - before
		if err != nil {
			return res, closed(err)
		}
		batch = batch[:0]
	}
	return res, nil
}

// fillWindow is how many chunks after the last one a reader touched count
// as "about to be read": the fill puts those in the memory cache, acting as
// read-ahead for a reader streaming through the image (16 MiB at the
// default chunk size).
const fillWindow = 32

// nearReader reports whether chunk j lies within fillWindow chunks after
// the last chunk a reader touched.
func (im *Image) nearReader(j int) bool {
	last := im.last.Load()
	return last >= 0 && int64(j) > last && int64(j) <= last+fillWindow
}

// fastTier returns the agent's fastest tier if it can say what it holds.
func (a *Agent) fastTier() hasTier {
	if h, ok := a.tiers[0].t.(hasTier); ok {
		return h
	}
	return nil
}

// waitQuiet returns once no read of the image began for o.After (and none
// is in progress), or o.Start is closed.
func (im *Image) waitQuiet(ctx context.Context, o FillOptions) error {
	if o.After < 0 {
		return nil
	}
	t := time.NewTicker(o.Poll)
	defer t.Stop()
	seq := im.demandSeq.Load()
	quietSince := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-o.Start:
			return nil
		case now := <-t.C:
			if s := im.demandSeq.Load(); s != seq || im.demandActive.Load() > 0 {
				seq, quietSince = s, now
				continue
			}
			if now.Sub(quietSince) >= o.After {
				return nil
			}
		}
	}
}

// waitPressure waits while more than half of the agent's fetch slots are
// busy.
func (im *Image) waitPressure(ctx context.Context, poll time.Duration) error {
	sem := im.a.sem
	for len(sem) > cap(sem)/2 {
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return ctx.Err()
}
