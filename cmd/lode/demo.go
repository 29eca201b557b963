package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/demo"
	"github.com/lode-dev/lode/internal/manifest"
)

type demoOptions struct {
	payload    int64
	rebuild    bool
	fleetNodes int
	noRun      bool
	keepImage  string
	run        runOptions
}

func newDemoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a sample multi-layer image and run it lazily (needs root, FUSE, runc)",
		Long: `Demo runs the whole path with embedded defaults: it creates the keyring if there
is none, writes a real multi-layer OCI image (a userland copied from this host,
an application layer, and a large payload layer the start never reads), builds
it into the local store (~/.local/share/lode, or $LODE_HOME), then runs its
entrypoint as a container from a cold worker cache, fetching only the chunks
the start reads, and prints the statistics.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), o, stdout)
		},
	}
	f := cmd.Flags()
	f.Int64Var(&o.payload, "payload", 1<<30, "bytes of the unused payload layer")
	f.BoolVar(&o.rebuild, "rebuild", false, "build the sample image again even if the store has it")
	f.BoolVar(&o.noRun, "no-run", false, "build the sample image, then stop")
	f.StringVar(&o.keepImage, "keep-image", "", "also write the built ext4 image to this path (with --rebuild or a first build)")
	f.IntVar(&o.fleetNodes, "fleet-nodes", 5, "start an in-process cache fleet of this many nodes on 127.0.0.x and run twice: a cold worker that fills the fleet, then a second worker that reads from it (0: no fleet, one run)")
	o.run.network = "host"
	o.run.runtime = "runc"
	bindWorker(f, &o.run.worker)
	// The demo builds and runs in one process on one keyring: it is the
	// builder, so its worker half is allowed the store secret.
	o.run.worker.AllowStoreSecret = true
	return cmd
}

const demoImage = "lode-demo"

func runDemo(ctx context.Context, o demoOptions, out io.Writer) error {
	if _, err := manifest.LoadFileKeyring(global.keyringPath()); errors.Is(err, fs.ErrNotExist) {
		if err := runKeysCreate(out); err != nil {
			return err
		}
	}
	kr, err := openKeyring()
	if err != nil {
		return err
	}
	if !kr.HasTenant(global.tenant) {
		if err := runKeysCreate(out); err != nil {
			return err
		}
	}
	st, err := openStore(ctx)
	if err != nil {
		return err
	}
	_, lerr := catalog.Lookup(ctx, st, global.tenant, demoImage)
	if o.rebuild || errors.Is(lerr, catalog.ErrNoImage) {
		dir := filepath.Join(global.home, "demo", fmt.Sprintf("sample-%d", o.payload))
		fmt.Fprintf(out, "== writing the sample OCI image to %s\n", dir)
		src, err := demo.WriteSample(ctx, dir, demo.Options{PayloadBytes: o.payload})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "== lode build %s --name %s\n", src, demoImage)
		bo := defaultBuildOptions()
		bo.name, bo.keepImage = demoImage, o.keepImage
		if err := runBuild(ctx, bo, src, out); err != nil {
			return err
		}
	} else if lerr != nil {
		return lerr
	} else {
		fmt.Fprintf(out, "== the store already has %s (use --rebuild to build it again)\n", demoImage)
	}
	fmt.Fprintf(out, "== lode inspect %s\n", demoImage)
	if err := runInspect(ctx, demoImage, false, out); err != nil {
		return err
	}
	if o.noRun {
		return nil
	}
	o.run.stateDir = filepath.Join(global.home, "mounts")
	runs := []string{"worker 1: cold worker cache, empty fleet"}
	if o.fleetNodes > 0 {
		nodes, stop, err := cachenode.StartLocal(ctx, logger, o.fleetNodes)
		if err != nil {
			return err
		}
		defer stop()
		o.run.worker.Fleet = nodes
		fmt.Fprintf(out, "== started an in-process cache fleet: %s\n", strings.Join(nodes, ", "))
		runs = append(runs, "worker 2: cold worker cache, warm fleet")
	}
	for _, what := range runs {
		// A fresh disk cache per run makes each start cold on its worker.
		cache, err := os.MkdirTemp(global.home, "demo-cache-")
		if err != nil {
			return err
		}
		o.run.worker.CacheDir = cache
		fmt.Fprintf(out, "== lode run %s (%s)\n", demoImage, what)
		err = runRun(ctx, o.run, demoImage, nil, nil, out, out)
		os.RemoveAll(cache)
		if err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond) // let background fleet write-back finish
	}
	return nil
}
