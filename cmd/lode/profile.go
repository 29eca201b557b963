package main

// profile.go: startup profiles (issue #8). `lode run --record` stores the
// chunks a start read, in order, as the manifest's hints; later runs
// prefetch them in parallel from the moment the image is opened.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/worker"
)

// afterRun records the profile (--record; not when the run failed, runErr),
// draws the heatmap (--heatmap) and reports the first output and the
// prefetch. It runs before the worker closes.
func afterRun(ctx context.Context, o runOptions, name string, w *worker.Image, first *firstWrite, runErr error, errOut io.Writer) error {
	if t := first.since(); t > 0 {
		fmt.Fprintf(errOut, "lode: %s: first output after %v\n", w.Name, t.Round(time.Millisecond))
	}
	if n := len(w.Manifest.Hints); n > 0 {
		fmt.Fprintf(errOut, "  startup profile: %d chunks; %d prefetched\n", n, w.Image.Stats().Prefetches)
	}
	var errs []error
	if o.heatmap != "" {
		if err := writeRunHeatmap(w, o.heatmap); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(errOut, "  heatmap of the chunks by tier: %s\n", o.heatmap)
		}
	}
	if o.record && runErr == nil {
		id, n, err := recordProfile(ctx, name, w)
		if err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(errOut, "  recorded a startup profile of %d chunks: manifest %s\n", n, id)
		}
	}
	return errors.Join(errs...)
}

// recordProfile stores the image's read order as the hints of a new
// manifest (sealed for the tenant, so the hints are encrypted) and points
// the image at it. The pointer keeps its root and creation time. The old
// manifest stays in the root, unreferenced, until the garbage collector
// retires the root (as after a rebuild).
func recordProfile(ctx context.Context, name string, w *worker.Image) (id string, n int, err error) {
	order := w.Image.ReadOrder()
	if len(order) == 0 {
		return "", 0, fmt.Errorf("recording a profile of %s: the run read no chunk", w.Name)
	}
	m := *w.Manifest
	m.Hints = order
	kr, err := openKeyring()
	if err != nil {
		return "", 0, err
	}
	st, err := openStore(ctx)
	if err != nil {
		return "", 0, err
	}
	id, err = catalog.StoreHints(ctx, st, kr, global.tenant, name, w.Pointer, &m)
	return id, len(order), err
}

// firstWrite passes writes through to w and notes when the first one came.
type firstWrite struct {
	w     io.Writer
	start time.Time
	once  sync.Once
	mu    sync.Mutex
	first time.Duration
}

func newFirstWrite(w io.Writer) *firstWrite { return &firstWrite{w: w, start: time.Now()} }

func (f *firstWrite) Write(p []byte) (int, error) {
	if len(p) > 0 {
		f.once.Do(func() {
			f.mu.Lock()
			f.first = time.Since(f.start)
			f.mu.Unlock()
		})
	}
	return f.w.Write(p)
}

// since is the time from the run's start to the first byte of output, 0 if
// there was none.
func (f *firstWrite) since() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.first
}

// compressionFlag parses build --compress.
func compressionFlag(s string) (uint8, error) {
	switch s {
	case "", "none":
		return manifest.CompressionNone, nil
	case "zstd":
		return manifest.CompressionZstd, nil
	}
	return 0, fmt.Errorf("--compress %q: want none or zstd", s)
}
