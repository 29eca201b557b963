package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/run"
)

type runOptions struct {
	entrypoint    string
	setEntrypoint bool
	env           []string
	network       string
	runtime       string
	keep          bool
	prefetchAll   bool
	stateDir      string
	worker        workerOptions
	record        bool   // store the start's read order as the image's profile (profile.go)
	noPrefetch    bool   // ignore the image's profile
	heatmap       string // draw the chunks by serving tier to this SVG file
	fill          fillOptions
}

func newRunCmd() *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run NAME [-- CMD ARGS...]",
		Short: "Mount an image lazily and run its entrypoint (or CMD) as a container",
		Long: `Run mounts the image on demand (as lode mount does), puts a writable overlay on
top (upper dir on local disk) and starts the image's entrypoint and cmd — or the
given CMD, which replaces the image's cmd as in "docker run IMAGE CMD" — with
runc, using the image's env, working dir and user. Output and exit status pass
through. At the end it prints the time to first exec, the bytes fetched from
each tier and the share of the image that was read.`,
		Example: `  lode run app
  lode run app -- /bin/sh -c 'cat /etc/os-release'
  lode run app --entrypoint /usr/bin/python3 -- -c 'print(42)'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.setEntrypoint = cmd.Flags().Changed("entrypoint")
			return runRun(cmd.Context(), o, args[0], args[1:], os.Stdin, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.entrypoint, "entrypoint", "", "replace the image's entrypoint (and drop its cmd)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "extra environment KEY=VALUE (repeatable)")
	f.StringVar(&o.network, "network", run.NetworkHost, "network: host or none")
	f.StringVar(&o.runtime, "runtime", "runc", "OCI runtime binary")
	f.BoolVar(&o.keep, "keep", false, "keep the container's state dir (and its writes) afterwards")
	f.BoolVar(&o.prefetchAll, "prefetch-all", false, "download every chunk before mounting (the non-lazy baseline)")
	f.StringVar(&o.stateDir, "state-dir", fuse.DefaultStateDir, "where mount state lives")
	f.BoolVar(&o.record, "record", false, "record the chunks this start reads, in order, as the image's startup profile (stored encrypted in its manifest)")
	f.BoolVar(&o.noPrefetch, "no-prefetch", false, "do not prefetch the image's startup profile")
	f.StringVar(&o.heatmap, "heatmap", "", "after the run, draw the image's chunks colored by the tier that served them to this SVG file")
	o.worker.bind(f)
	o.fill.bind(f)
	return cmd
}

// runReport is what lode run measured.
type runReport struct {
	Mounted   time.Duration // command start → filesystem mounted
	FirstExec time.Duration // command start → container process exec'd
	Total     time.Duration
	ExitCode  int
}

func runRun(ctx context.Context, o runOptions, name string, args []string, in io.Reader, out, errOut io.Writer) error {
	first := newFirstWrite(out)
	rep, w, err := runImage(ctx, o, name, args, in, first, errOut)
	if w != nil {
		fmt.Fprintf(errOut, "lode: %s: mounted in %v, first exec after %v, exit %d after %v\n",
			w.name, rep.Mounted.Round(time.Millisecond), rep.FirstExec.Round(time.Millisecond), rep.ExitCode, rep.Total.Round(time.Millisecond))
		printStats(errOut, w)
		if aerr := afterRun(ctx, o, name, w, first, err, errOut); err == nil {
			err = aerr
		}
		w.Close()
	}
	if err != nil {
		return err
	}
	if rep.ExitCode != 0 {
		return &exitError{code: rep.ExitCode}
	}
	return nil
}

func runImage(ctx context.Context, o runOptions, name string, args []string, in io.Reader, out, errOut io.Writer) (runReport, *worker, error) {
	start := time.Now()
	var rep runReport
	if o.fill.on {
		if err := o.fill.check(); err != nil {
			return rep, nil, err
		}
	}
	w, err := openWorker(ctx, o.worker, name, nil)
	if err != nil {
		return rep, nil, err
	}
	startPrefetch(ctx, o, w)
	execd := make(chan struct{})
	o.fill.start(ctx, w.image, execd)
	if o.prefetchAll {
		if err := readAll(ctx, w.image, 8); err != nil {
			return rep, w, fmt.Errorf("prefetching %s: %w", w.name, err)
		}
	}
	base := filepath.Join(global.home, "run")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return rep, w, err
	}
	work, err := os.MkdirTemp(base, "c-")
	if err != nil {
		return rep, w, err
	}
	defer os.RemoveAll(work)
	lower := filepath.Join(work, "lower")
	if err := os.Mkdir(lower, 0o755); err != nil {
		return rep, w, err
	}
	mo := fuse.MountOptions{StateDir: o.stateDir}
	mo.Log = logger
	m, err := fuse.MountImage(ctx, lower, w.image, mo)
	if err != nil {
		return rep, w, fmt.Errorf("mounting %s: %w", w.name, err)
	}
	defer m.Close()
	rep.Mounted = time.Since(start)

	ro := run.Options{
		Lower:    lower,
		StateDir: filepath.Join(work, "bundle"),
		Keep:     o.keep,
		Config:   w.manifest.Config,
		Args:     args,
		Env:      o.env,
		Runtime:  o.runtime,
		Network:  o.network,
		Stdin:    in,
		Stdout:   out,
		Stderr:   errOut,
		Log:      logger,
		Now:      execClock(execd),
	}
	if o.setEntrypoint {
		ro.Entrypoint = []string{}
		if o.entrypoint != "" {
			ro.Entrypoint = []string{o.entrypoint}
		}
	}
	if o.keep {
		ro.StateDir = filepath.Join(base, filepath.Base(work)+"-bundle")
	}
	res, err := run.Run(ctx, ro)
	if !res.Started.IsZero() {
		rep.FirstExec = res.Started.Sub(start)
	}
	rep.Total = time.Since(start)
	rep.ExitCode = res.ExitCode
	if err != nil {
		return rep, w, fmt.Errorf("running %s: %w", w.name, err)
	}
	return rep, w, nil
}

// readAll reads every byte of d with par readers of one chunk-sized span
// each, so every chunk passes through the tiers once.
func readAll(ctx context.Context, d interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}, par int) error {
	const span = 1 << 20
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	for off := int64(0); off < d.Size(); off += span {
		off := off
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

// execClock is a run.Options.Now that closes execd at its second reading:
// run.Run reads the clock when it begins and then when the runtime reports
// the container's process started (Result.Started), which is when the
// background fill may start without waiting for its quiet period.
// run.Options has no start hook; if a later reading order changes, the fill
// just falls back to its quiet period.
func execClock(execd chan struct{}) func() time.Time {
	var mu sync.Mutex
	n := 0
	return func() time.Time {
		mu.Lock()
		n++
		if n == 2 {
			close(execd)
		}
		mu.Unlock()
		return time.Now()
	}
}
