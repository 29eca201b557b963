package worker

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/run"
)

// Mount mounts w read-only at dir (FUSE + loop + ext4, fuse.MountImage),
// after starting its startup profile's prefetch with parallel fetches, and
// then starts the background fill: lode mount's sequence.
func (w *Image) Mount(ctx context.Context, dir, stateDir string, parallel int, fill FillOptions) (*fuse.ImageMount, error) {
	if err := fill.Check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating mount point: %w", err)
	}
	w.Prefetch(ctx, parallel)
	mo := fuse.MountOptions{StateDir: stateDir}
	mo.Log = w.log
	m, err := fuse.MountImage(ctx, dir, w.Image, mo)
	if err != nil {
		return nil, fmt.Errorf("mounting %s at %s: %w", w.Name, dir, err)
	}
	w.Trace.Mark("mounted")
	fill.Start(ctx, w.Image, nil, w.log)
	return m, nil
}

// RunOptions configure Run: a container on a lazily mounted image.
type RunOptions struct {
	// Base is where containers' work directories are made ($LODE_HOME/run);
	// StateDir is where mount state lives.
	Base, StateDir string
	// Entrypoint, if not nil, replaces the image's entrypoint (and drops its
	// cmd); Args replace its cmd. Env adds KEY=VALUE pairs.
	Entrypoint []string
	Args, Env  []string
	// Runtime is the OCI runtime binary; Network "host" or "none".
	Runtime, Network string
	// Keep keeps the container's state dir (and its writes) afterwards.
	Keep bool
	// PrefetchAll reads the whole image before mounting (the non-lazy
	// baseline); NoPrefetch ignores the image's startup profile; Fetches is
	// the profile prefetch's parallelism.
	PrefetchAll, NoPrefetch bool
	Fetches                 int
	Fill                    FillOptions
	Stdin                   io.Reader
	Stdout, Stderr          io.Writer
}

// RunReport times a Run.
type RunReport struct {
	Mounted   time.Duration // start → filesystem mounted
	FirstExec time.Duration // start → container process exec'd
	Total     time.Duration
	ExitCode  int
}

// Run is lode run's sequence on an opened image: prefetch the startup
// profile, start the background fill (it starts at the first exec at the
// latest), mount the image as the lower dir of an overlay and run the
// container with runc (internal/run). start is when the command started,
// for the report.
func (w *Image) Run(ctx context.Context, o RunOptions, start time.Time) (RunReport, error) {
	var rep RunReport
	if err := o.Fill.Check(); err != nil {
		return rep, err
	}
	if !o.NoPrefetch {
		w.Prefetch(ctx, o.Fetches)
		w.PrefetchStartFiles(ctx, o.Entrypoint, o.Fetches)
	}
	execd := make(chan struct{})
	o.Fill.Start(ctx, w.Image, execd, w.log)
	if o.PrefetchAll {
		if err := readAll(ctx, w.Image, 8); err != nil {
			return rep, fmt.Errorf("prefetching %s: %w", w.Name, err)
		}
	}
	if err := os.MkdirAll(o.Base, 0o755); err != nil {
		return rep, err
	}
	work, err := os.MkdirTemp(o.Base, "c-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(work)
	lower := filepath.Join(work, "lower")
	if err := os.Mkdir(lower, 0o755); err != nil {
		return rep, err
	}
	mo := fuse.MountOptions{StateDir: o.StateDir}
	mo.Log = w.log
	m, err := fuse.MountImage(ctx, lower, w.Image, mo)
	if err != nil {
		return rep, fmt.Errorf("mounting %s: %w", w.Name, err)
	}
	defer m.Close()
	rep.Mounted = time.Since(start)
	w.Trace.Mark("mounted")

	ro := run.Options{
		Lower:      lower,
		StateDir:   filepath.Join(work, "bundle"),
		Keep:       o.Keep,
		Config:     w.Manifest.Config,
		Entrypoint: o.Entrypoint,
		Args:       o.Args,
		Env:        o.Env,
		Runtime:    o.Runtime,
		Network:    o.Network,
		Stdin:      o.Stdin,
		Stdout:     o.Stdout,
		Stderr:     o.Stderr,
		Log:        w.log,
		Now:        execClock(execd, func() { w.Trace.Mark("exec") }),
	}
	if o.Keep {
		ro.StateDir = filepath.Join(o.Base, filepath.Base(work)+"-bundle")
	}
	res, err := run.Run(ctx, ro)
	w.Trace.Mark("exit")
	if !res.Started.IsZero() {
		rep.FirstExec = res.Started.Sub(start)
	}
	rep.Total = time.Since(start)
	rep.ExitCode = res.ExitCode
	if err != nil {
		return rep, fmt.Errorf("running %s: %w", w.Name, err)
	}
	return rep, nil
}

// readAll reads all of d, par spans of 1 MiB at a time.
func readAll(ctx context.Context, d interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}, par int) error {
	const span = 1 << 20
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	for off := int64(0); off < d.Size(); off += span {
		g.Go(func() error {
			buf := make([]byte, min(span, d.Size()-off))
			_, err := d.ReadAt(ctx, buf, off)
			if err == io.EOF {
				err = nil
			}
			return err
		})
	}
	return g.Wait()
}

// execClock is run.Options.Now that closes execd at its second call: the
// container's exec, and calls onExec then (run.Run reads the clock before starting the container
// and when it has started).
func execClock(execd chan struct{}, onExec func()) func() time.Time {
	var mu sync.Mutex
	n := 0
	return func() time.Time {
		mu.Lock()
		n++
		if n == 2 {
			close(execd)
			onExec()
		}
		mu.Unlock()
		return time.Now()
	}
}
