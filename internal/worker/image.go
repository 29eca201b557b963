package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/heatmap"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
)

// Image is one image opened on a stack of its own: what lode mount, run,
// serve-nbd, serve-vhost and vm serve (the daemon instead opens every image
// on its one stack).
type Image struct {
	*Stack
	Image    *agent.Image
	Manifest *manifest.Manifest
	Pointer  store.Pointer
	Name     string // tenant/name
	// Watch raises the GC alarm on reads while the image's root is expired.
	Watch *RootWatch
	log   *slog.Logger
	// tenantName and imageName name the image in the catalog.
	tenantName, imageName string
	// localOrigin: the origin is a directory on local disk (store/file).
	localOrigin bool
	// learn loads (and may record) the learned startup profile.
	learn *learner
}

// Open resolves tenant's image name and opens it through a new stack over
// the origin at its pointer's root. Metrics are registered on reg when it
// is not nil.
func Open(ctx context.Context, st store.Store, kr manifest.Keyring, tenant, name string, o Options, reg prometheus.Registerer, log *slog.Logger) (*Image, error) {
	if err := checkKeyring(kr, o.AllowStoreSecret); err != nil {
		return nil, err
	}
	p, err := catalog.Lookup(ctx, st, tenant, name)
	if err != nil {
		return nil, err
	}
	// The learned profile is read while the manifest is: no round trip of
	// its own before the prefetch can start.
	prof := fetchProfile(st, p)
	// So is the root's state (the expired-root watch).
	state := readRootAsync(ctx, st, p.Root)
	m, err := catalog.ResolvePointer(ctx, st, kr, tenant, name, p)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Image{Manifest: m, Pointer: p, Name: tenant + "/" + name, tenantName: tenant, imageName: name, log: log}
	w.localOrigin = onLocalDisk(st)
	s, err := NewStack(ctx, o, agent.NewOrigin(st, p.Root), reg, log, Parts{LocalOrigin: onLocalDisk(st)})
	if err != nil {
		return nil, err
	}
	w.Stack = s
	im, err := s.Agent.Open(w.Name, m)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("opening image %s: %w", w.Name, err)
	}
	w.Image = im
	w.learn = startLearner(st, p, m, im, w.Name, o.LearnProfile, prof, profile.NewMetrics(reg), log)
	var reads prometheus.Counter
	if reg != nil {
		reads = NewExpiredReadsCounter()
		if err := reg.Register(reads); err != nil {
			reads = nil
		}
	}
	w.Watch = newRootWatch(st, tenant, name, m, p.Root, log, reads, <-state)
	w.Watch.Attach(im)
	return w, nil
}

// Close closes the image, then its stack.
func (w *Image) Close() error {
	var errs []error
	if w.Image != nil {
		errs = append(errs, w.Image.Close())
	}
	w.learn.Wait()
	if w.Watch != nil {
		w.Watch.Close()
	}
	if w.Stack != nil {
		errs = append(errs, w.Stack.Close())
	}
	return errors.Join(errs...)
}

// Prefetch fetches, in the background with parallel fetches, the image's
// learned startup profile (loaded at open; internal/profile) and then its
// build start set (the manifest's hints) not already in it: profile.Merge.
// Over an origin on local disk at most localPrefetch run at once, and the
// prefetch yields to the image's reads (agent.Image.SetPrefetchYield).
func (w *Image) Prefetch(ctx context.Context, parallel int) {
	w.learn.startPrefetch(ctx, w.Image, w.Manifest.Hints, w.localOrigin, parallel, w.log, w.Name)
}

// PrefetchAtOpen starts, in the background, the prefetch a worker gives
// every image it opens (Image.Prefetch, lode agent's mounts and exports),
// for an image opened on a bare agent without a learned profile: its build
// start set (hints, manifest.Hints) with prefetchFor's parallelism and
// yield rule (local: the origin is on local disk). bench/starts calls it so
// that its starts do at open what the product does. It ends when the image
// closes (Close waits for it) or ctx ends.
func PrefetchAtOpen(ctx context.Context, im *agent.Image, hints []uint32, local bool, parallel int) {
	var l *learner // none: Learned is nil, so the order is the hints'
	l.startPrefetch(ctx, im, hints, local, parallel, slog.New(slog.DiscardHandler), "")
}

// LearnedProfile waits for the image's learned startup profile to load and
// returns its chunks in prefetch order (nil: none).
func (w *Image) LearnedProfile(ctx context.Context) []uint32 { return w.learn.Learned(ctx) }

// localPrefetch bounds the prefetch's fetches in flight over an origin on
// local disk: it is bandwidth-bound, not latency-bound, and two dozen cold
// chunk reads at once finish together, late, while the mount's own reads
// (and the page-ins of this program) queue behind them; two at a time
// finish in the start set's order, metadata first. Measured on the python3
// start (docs/coldstart.md): 24 in flight delayed the mount by 300–700 ms,
// 4 by 150–300 ms, 2 by none measurable. Over S3 at 36 ms a request, 24 in
// flight is what cuts the serial chain.
const localPrefetch = 2

// prefetchFor is the parallelism of im's prefetches: parallel (at least 1),
// and over an origin on local disk at most localPrefetch, yielding to the
// image's reads.
func prefetchFor(im *agent.Image, local bool, parallel int) int {
	parallel = max(1, parallel)
	if local {
		parallel = min(parallel, localPrefetch)
		im.SetPrefetchYield(true)
	}
	return parallel
}

// onLocalDisk reports whether st is an origin on local disk (store/file).
func onLocalDisk(st store.Store) bool {
	l, ok := st.(interface{ LocalDisk() bool })
	return ok && l.LocalDisk()
}

// Device is the block device a frontend exports for w: the image itself,
// or a copy-on-write overlay over it when overlay names a file. It also
// starts prefetching the image's startup profile. The returned close
// releases the overlay.
func (w *Image) Device(ctx context.Context, overlay string, parallel int) (blockdev.Device, func() error, error) {
	w.Prefetch(ctx, parallel)
	if overlay == "" {
		return w.Image, func() error { return nil }, nil
	}
	ov, err := blockdev.NewOverlay(w.Image, overlay)
	if err != nil {
		return nil, nil, err
	}
	return ov, ov.Close, nil
}

// WriteStats writes the per-tier statistics of the image's reads.
func (w *Image) WriteStats(out io.Writer) {
	s := w.Image.Stats()
	reads := s.MemHits
	for _, t := range s.Tiers {
		reads += t.Hits
	}
	share := func(n int64) float64 {
		if reads == 0 {
			return 0
		}
		return 100 * float64(n) / float64(reads)
	}
	fmt.Fprintf(out, "image %s: read %s of %s (%.2f%% of the image in %d distinct chunks; %d hole reads)\n",
		w.Name, humanize.IBytes(uint64(s.DistinctBytesRead)), humanize.IBytes(uint64(s.ImageSize)),
		100*s.ShareRead(), s.DistinctChunksRead, s.Holes)
	fmt.Fprintf(out, "  chunk reads by tier: memory %d (%.1f%%)", s.MemHits, share(s.MemHits))
	var fetched int64
	for _, t := range s.Tiers {
		fmt.Fprintf(out, ", %s %d (%.1f%%, %s)", t.Tier, t.Hits, share(t.Hits), humanize.IBytes(uint64(t.Bytes)))
		fetched += t.Bytes
	}
	fmt.Fprintf(out, "\n  fetched %s in all; %d read-aheads, %d fetch errors, %d verification failures\n",
		humanize.IBytes(uint64(fetched)), s.ReadAheads, s.FetchErrors, s.VerifyFailures)
	if s.Filled > 0 {
		fmt.Fprintf(out, "  background fill fetched %d chunks\n", s.Filled)
	}
	if len(s.Degraded) > 0 {
		reasons := make([]string, 0, len(s.Degraded))
		for r, n := range s.Degraded {
			reasons = append(reasons, fmt.Sprintf("%s %d", r, n))
		}
		sort.Strings(reasons)
		fmt.Fprintf(out, "  lazy loading degraded: %s\n", strings.Join(reasons, ", "))
	}
}

// RunHeatmap is the picture of the image's chunks by the tier that served
// them so far (lode run --heatmap).
func (w *Image) RunHeatmap() heatmap.Map {
	s := w.Image.Stats()
	tiers := make([]string, len(s.Tiers))
	for i, t := range s.Tiers {
		tiers[i] = t.Tier
	}
	return heatmap.ForRun(w.Name, w.Manifest, tiers, w.Image.ChunkTiers(), agent.ServedNone, agent.ServedMem)
}
