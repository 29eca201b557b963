package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/worker"
)

type mountOptions struct {
	background bool
	stateDir   string
	metrics    string
	worker     worker.Options
	fill       worker.FillOptions
}

func newMountCmd() *cobra.Command {
	var o mountOptions
	cmd := &cobra.Command{
		Use:   "mount NAME DIR",
		Short: "Mount an image read-only at DIR, fetching chunks on demand",
		Long: `Mount exposes the image as a read-only file through FUSE, attaches a read-only
loop device to it and mounts the ext4 filesystem at DIR. Only the chunks that
reads touch are fetched (memory cache → disk cache → fleet → origin), each
decrypted and verified before a byte is returned; a chunk that cannot be
fetched or verified gives EIO to the reader.

Mount serves until "lode umount DIR", SIGINT or SIGTERM; with --background it
returns once the filesystem is mounted and keeps serving in a detached process.
Needs root, /dev/fuse and loop devices. After a crash, "lode umount DIR" or
"lode doctor" cleans up (see docs/operations.md).`,
		Example: `  lode mount app /mnt/app --background
  ls /mnt/app
  lode umount /mnt/app`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.background {
				return mountInBackground(cmd.Context(), o, args[0], args[1])
			}
			return runMount(cmd.Context(), o, args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.background, "background", "d", false, "return once mounted; serve from a detached process")
	f.StringVar(&o.stateDir, "state-dir", fuse.DefaultStateDir, "where mount state lives (lode umount and lode doctor read it)")
	f.StringVar(&o.metrics, "metrics-listen", "", "serve Prometheus /metrics on this address while mounted")
	bindWorker(f, &o.worker)
	bindFill(f, &o.fill)
	return cmd
}

// mountedLine is what a mount prints once the filesystem is usable; a
// --background parent waits for it.
const mountedLine = "mounted "

// runMount wires lode mount: open the image, serve its metrics, mount it
// (worker.Image.Mount) and serve until unmounted or ctx ends.
func runMount(ctx context.Context, o mountOptions, name, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := o.fill.Check(); err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	w, err := openImage(ctx, o.worker, name, reg)
	if err != nil {
		return err
	}
	defer w.Close()
	if o.metrics != "" {
		stop, err := metrics.Serve(o.metrics, reg, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	m, err := w.MountOrAdopt(ctx, dir, o.stateDir, o.worker.Fetches, o.fill)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s%s at %s (%d bytes, loop %s)\n", mountedLine, w.Name, dir, w.Image.Size(), m.Loop())
	if f, ok := stdout.(*os.File); ok {
		f.Sync()
	}
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done: // lode umount from another process
	case <-ctx.Done():
		if err := m.Close(); err != nil {
			return err
		}
	}
	w.WriteStats(stderr)
	return nil
}

// mountInBackground wires lode mount --background: the same command line,
// without the flag, as the detached server; mount here meanwhile and hand
// the mount over (worker.StartBackground, worker.Options.ForParent).
func mountInBackground(ctx context.Context, o mountOptions, name, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := o.fill.Check(); err != nil {
		return err
	}
	bg, err := worker.StartBackground(os.Args[1:], filepath.Join(global.home, "logs"), name, dir)
	if err != nil {
		return err
	}
	w, err := openImage(ctx, o.worker.ForParent(), name, nil)
	if err != nil {
		return bg.Abort(err)
	}
	defer w.Close()
	m, err := bg.Serve(ctx, w, o.stateDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s%s at %s (%d bytes, loop %s)\nserving from pid %d; logs in %s\n", mountedLine, w.Name, dir, w.Image.Size(), m.Loop(), bg.Pid(), bg.LogPath())
	return nil
}

func newUmountCmd() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "umount DIR",
		Short: "Unmount an image mounted by lode mount (also after a crash)",
		Long: `Umount unmounts DIR, detaches its loop device and unmounts the FUSE file behind
it. It works whether or not the serving process is still alive.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fuse.Unmount(cmd.Context(), stateDir, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "unmounted %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", fuse.DefaultStateDir, "where mount state lives")
	return cmd
}
