package worker

// learn.go: learned startup profiles (issue #21, internal/profile). Every
// image a worker opens loads its manifest's learned profile in the
// background; Prefetch fetches it, then the build's start set. When the
// worker learns (--learn-profile) and the profile has fewer than
// profile.MaxStarts starts, the start's read set is published once its
// reads are over (LearnGate) or, for lode run, when the run ends.

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
)

// LearnGate is when a start's reads are over for learning: after 2 s
// without a read (longer than StartGate's 250 ms: between a mount and its
// container's exec the image may be idle for a while, and a learned
// profile that misses the start is useless), at most 30 s after open.
var LearnGate = agent.StartGate{Window: 30 * time.Second, Quiet: 2 * time.Second}

// learnTimeout bounds loading and publishing a profile.
const learnTimeout = 30 * time.Second

// learner is one opened image's learned profile: loaded at open, and the
// start's read set published when learning.
type learner struct {
	st   store.Store
	pi   profile.Image
	im   *agent.Image
	name string
	log  *slog.Logger
	met  *profile.Metrics

	loaded chan struct{}
	prof   *profile.Profile // valid after loaded; nil: none usable

	learn   bool
	gated   chan struct{} // the start's reads are over
	gateMu  sync.Mutex
	atGate  []uint32 // the read order when gated closed
	pubOnce sync.Once
	pubErr  error
	wg      sync.WaitGroup
}

// fetched is a sealed profile read from the store (profile.Fetch).
type fetched struct {
	b   []byte
	err error
}

// fetchProfile starts reading the sealed learned profile of p's manifest.
func fetchProfile(st store.Store, p store.Pointer) <-chan fetched {
	ch := make(chan fetched, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), learnTimeout)
		defer cancel()
		b, err := profile.Fetch(ctx, st, p.Root, p.Manifest)
		ch <- fetched{b, err}
	}()
	return ch
}

// startLearner opens the learned profile (being read: prof) of the image im
// opened from manifest m at pointer p, and when learn is set arms the
// recording.
func startLearner(st store.Store, p store.Pointer, m *manifest.Manifest, im *agent.Image, name string, learn bool, prof <-chan fetched, met *profile.Metrics, log *slog.Logger) *learner {
	l := &learner{
		st: st, pi: profile.Image{Root: p.Root, ID: p.Manifest, M: m}, im: im, name: name, log: log, met: met,
		loaded: make(chan struct{}), learn: learn, gated: make(chan struct{}),
	}
	l.wg.Go(func() { l.load(prof) })
	if learn {
		LearnGate.Hold(func() {
			l.gateMu.Lock()
			l.atGate = im.ReadOrder()
			l.gateMu.Unlock()
			close(l.gated)
		}, im, nil)
		l.wg.Go(func() {
			<-l.gated
			l.publish(l.snapshot())
		})
	}
	return l
}

func (l *learner) load(prof <-chan fetched) {
	defer close(l.loaded)
	f := <-prof
	p, err := f.b, f.err
	var lp *profile.Profile
	if err == nil {
		lp, err = profile.OpenFetched(p, l.pi)
	}
	switch {
	case err == nil && lp == nil:
		l.met.Load(profile.LoadNone)
	case err == nil:
		l.met.Load(profile.LoadFound)
		l.prof = lp
		l.log.Debug("learned startup profile", "image", l.name, "chunks", len(lp.Chunks), "starts", lp.Starts)
	case errors.Is(err, profile.ErrCorrupt), errors.Is(err, profile.ErrStale), errors.Is(err, profile.ErrVersion):
		l.met.Load(profile.LoadIgnored)
		l.log.Warn("ignoring the learned startup profile", "image", l.name, "err", err)
	default:
		l.met.Load(profile.LoadError)
		l.log.Warn("reading the learned startup profile", "image", l.name, "err", err)
	}
}

// Learned waits for the load and returns the learned profile's chunks (nil
// without one).
func (l *learner) Learned(ctx context.Context) []uint32 {
	if l == nil {
		return nil
	}
	select {
	case <-l.loaded:
	case <-ctx.Done():
		return nil
	}
	if l.prof == nil {
		return nil
	}
	return l.prof.Chunks
}

// snapshot is the start's read order: at the gate if it closed, else now.
func (l *learner) snapshot() []uint32 {
	select {
	case <-l.gated:
		l.gateMu.Lock()
		defer l.gateMu.Unlock()
		return l.atGate
	default:
		return l.im.ReadOrder()
	}
}

// publish publishes order once (the first caller's), unless the profile
// has learned enough or could not be read.
func (l *learner) publish(order []uint32) error {
	l.pubOnce.Do(func() {
		<-l.loaded
		if l.prof != nil && l.prof.Starts >= profile.MaxStarts || len(order) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), learnTimeout)
		defer cancel()
		p, err := profile.Publish(ctx, l.st, l.pi, order, time.Now(), l.log)
		if errors.Is(err, profile.ErrLearningOff) {
			l.log.Debug("not learning the startup profile", "image", l.name, "err", err)
			return
		}
		l.met.Publish(err)
		if err != nil {
			l.pubErr = err
			l.log.Warn("publishing the learned startup profile", "image", l.name, "err", err)
			return
		}
		l.log.Debug("published the learned startup profile", "image", l.name, "chunks", len(p.Chunks), "starts", p.Starts)
	})
	return l.pubErr
}

// Finish publishes the start's read set now (lode run, at its end) unless it
// was already, and returns the publish's error.
func (l *learner) Finish() error {
	if l == nil || !l.learn {
		return nil
	}
	return l.publish(l.snapshot())
}

// Wait waits for the background load and publish (the image is closed, so
// the gate has closed).
func (l *learner) Wait() {
	if l != nil {
		l.wg.Wait()
	}
}

// startPrefetch is the prefetch of every opened image: prefetch, in its
// own goroutine, with prefetchFor's parallelism and yield rule.
func (l *learner) startPrefetch(ctx context.Context, im *agent.Image, hints []uint32, local bool, parallel int, log *slog.Logger, name string) {
	parallel = prefetchFor(im, local, parallel)
	go l.prefetch(ctx, im, hints, parallel, log, name)
}

// prefetch fetches the learned profile, then the build's start set not in
// it (profile.Merge), with parallel fetches, and returns the fetches
// started.
func (l *learner) prefetch(ctx context.Context, im *agent.Image, hints []uint32, parallel int, log *slog.Logger, name string) {
	learned := l.Learned(ctx)
	order := profile.Merge(learned, hints)
	if len(order) == 0 {
		return
	}
	n, err := im.Prefetch(ctx, order, max(1, parallel))
	log.Debug("prefetched startup profile", "image", name, "learned", len(learned), "hints", len(hints), "fetches", n, "err", err)
}

// learnedNow is the learned profile's chunks if it has loaded (nil if not,
// or none).
func (w *Image) learnedNow() []uint32 {
	if w.learn == nil {
		return nil
	}
	select {
	case <-w.learn.loaded:
		if w.learn.prof != nil {
			return w.learn.prof.Chunks
		}
	default:
	}
	return nil
}
