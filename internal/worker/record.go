package worker

// record.go: the end of lode run — startup profiles (issue #8: --record
// stores the chunks a start read, in order, as the manifest's hints; later
// runs prefetch them) and the heatmap.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/heatmap"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// AfterRunOptions configure AfterRun: lode run's --record and --heatmap.
type AfterRunOptions struct {
	Heatmap string // draw the chunks by serving tier to this SVG file
	// Record stores the run's read order as the image's startup profile
	// (not when RunErr is set) in Store, sealed with Keyring.
	Record  bool
	Store   store.Store
	Keyring manifest.Keyring
	RunErr  error
	First   *FirstWrite // the container's output, timed
	ErrOut  io.Writer
}

// AfterRun is the end of lode run's sequence, before the image closes: it
// reports the first output and the prefetch, draws the heatmap and records
// the profile.
func (w *Image) AfterRun(ctx context.Context, o AfterRunOptions) error {
	errOut := o.ErrOut
	if t := o.First.Since(); t > 0 {
		fmt.Fprintf(errOut, "lode: %s: first output after %v\n", w.Name, t.Round(time.Millisecond))
	}
	if learned, n := len(w.learnedNow()), len(w.Manifest.Hints); learned+n > 0 {
		fmt.Fprintf(errOut, "  startup profile: %d learned + %d build chunks; %d prefetched\n", learned, n, w.Image.Stats().Prefetches)
	}
	var errs []error
	if o.Heatmap != "" {
		if err := heatmap.WriteFile(o.Heatmap, w.RunHeatmap()); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(errOut, "  heatmap of the chunks by tier: %s\n", o.Heatmap)
		}
	}
	if !o.Record && o.RunErr == nil {
		if err := w.learn.Finish(); err != nil {
			fmt.Fprintf(errOut, "  learning the startup profile: %v\n", err)
		}
	}
	if o.Record && o.RunErr == nil {
		id, n, err := w.RecordProfile(ctx, o.Store, o.Keyring)
		if err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(errOut, "  recorded a startup profile of %d chunks: manifest %s\n", n, id)
		}
	}
	return errors.Join(errs...)
}

// RecordProfile stores the image's read order as the hints of a new
// manifest (sealed for the tenant, so the hints are encrypted) and points
// the image at it. The pointer keeps its root and creation time. The old
// manifest stays in the root, unreferenced, until the garbage collector
// retires the root (as after a rebuild).
func (w *Image) RecordProfile(ctx context.Context, st store.Store, kr manifest.Keyring) (id string, n int, err error) {
	order := w.Image.ReadOrder()
	if len(order) == 0 {
		return "", 0, fmt.Errorf("recording a profile of %s: the run read no chunk", w.Name)
	}
	m := *w.Manifest
	m.Hints = order
	id, err = catalog.StoreHints(ctx, st, kr, w.tenantName, w.imageName, w.Pointer, &m)
	return id, len(order), err
}

// FirstWrite passes writes through to w and notes when the first one came.
type FirstWrite struct {
	w     io.Writer
	start time.Time
	once  sync.Once
	mu    sync.Mutex
	first time.Duration
}

// NewFirstWrite times the first write to w from now.
func NewFirstWrite(w io.Writer) *FirstWrite { return &FirstWrite{w: w, start: time.Now()} }

func (f *FirstWrite) Write(p []byte) (int, error) {
	if len(p) > 0 {
		f.once.Do(func() {
			f.mu.Lock()
			f.first = time.Since(f.start)
			f.mu.Unlock()
		})
	}
	return f.w.Write(p)
}

// Since is the time from the run's start to the first byte of output, 0 if
// there was none.
func (f *FirstWrite) Since() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.first
}
