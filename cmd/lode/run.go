package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/run"
	"github.com/lode-dev/lode/internal/worker"
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
	worker        worker.Options
	record        bool   // store the start's read order as the image's profile (profile.go)
	noPrefetch    bool   // ignore the image's profile
	heatmap       string // draw the chunks by serving tier to this SVG file
	fill          worker.FillOptions
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
	bindWorker(f, &o.worker)
	bindFill(f, &o.fill)
	return cmd
}

// runReport is what lode run measured.
// runRun wires lode run: open the image, run the container
// (worker.Image.Run), report, and record the profile or draw the heatmap
// (afterRun).
func runRun(ctx context.Context, o runOptions, name string, args []string, in io.Reader, out, errOut io.Writer) error {
	start := time.Now()
	first := newFirstWrite(out)
	if err := o.fill.Check(); err != nil {
		return err
	}
	w, err := openImage(ctx, o.worker, name, nil)
	if err != nil {
		return err
	}
	ro := worker.RunOptions{
		Base: filepath.Join(global.home, "run"), StateDir: o.stateDir,
		Args: args, Env: o.env, Runtime: o.runtime, Network: o.network, Keep: o.keep,
		PrefetchAll: o.prefetchAll, NoPrefetch: o.noPrefetch, Fetches: o.worker.Fetches, Fill: o.fill,
		Stdin: in, Stdout: first, Stderr: errOut,
	}
	if o.setEntrypoint {
		ro.Entrypoint = []string{}
		if o.entrypoint != "" {
			ro.Entrypoint = []string{o.entrypoint}
		}
	}
	rep, err := w.Run(ctx, ro, start)
	fmt.Fprintf(errOut, "lode: %s: mounted in %v, first exec after %v, exit %d after %v\n",
		w.Name, rep.Mounted.Round(time.Millisecond), rep.FirstExec.Round(time.Millisecond), rep.ExitCode, rep.Total.Round(time.Millisecond))
	w.WriteStats(errOut)
	if aerr := afterRun(ctx, o, name, w, first, err, errOut); err == nil {
		err = aerr
	}
	w.Close()
	if err != nil {
		return err
	}
	if rep.ExitCode != 0 {
		return &exitError{code: rep.ExitCode}
	}
	return nil
}
