package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/vhost"
	"github.com/lode-dev/lode/internal/vm"
	"github.com/lode-dev/lode/internal/worker"
)

func init() { extraCommands = append(extraCommands, newServeVhostCmd) }

type serveVhostOptions struct {
	socket  string
	overlay string
	workers int
	report  string
	worker  worker.Options
}

func newServeVhostCmd() *cobra.Command {
	var o serveVhostOptions
	cmd := &cobra.Command{
		Use:   "serve-vhost NAME --socket PATH",
		Short: "Serve an image as a vhost-user-blk backend for QEMU (read-only, or copy-on-write with --overlay)",
		Long: `Serve-vhost serves the image as a vhost-user-blk device on a unix socket:
QEMU's vhost-user-blk front-end connects, shares the guest's memory (a memfd
backend with share=on) and this process serves the virtio-blk queue directly
from the worker's tiers, with no NBD hop. The disk is read-only unless
--overlay names a local file that receives the writes (the image itself is
never changed). Every QEMU that connects gets the disk; it serves until
interrupted.`,
		Example: `  lode serve-vhost app --socket /run/lode/app.vhost
  qemu-system-x86_64 -M microvm,memory-backend=mem \
    -object memory-backend-memfd,id=mem,size=512M,share=on \
    -global virtio-mmio.force-legacy=false \
    -chardev socket,id=disk,path=/run/lode/app.vhost \
    -device vhost-user-blk,chardev=disk,num-queues=1 …
  lode vm app --disk vhost-user:/run/lode/app.vhost -- true`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServeVhost(cmd.Context(), o, args[0], nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "/run/lode/vhost.sock", "unix socket to listen on")
	f.StringVar(&o.overlay, "overlay", "", "copy-on-write file for writes (makes the disk writable)")
	f.IntVar(&o.workers, "workers", 16, "requests served at once per VM")
	f.StringVar(&o.report, "report", "", "on exit, write the bytes the VMs read and lode fetched per tier as JSON to this file (the fields of lode vm --report)")
	bindWorker(f, &o.worker)
	return cmd
}

// runServeVhost serves until ctx ends. ready, if not nil, is closed once
// the socket listens.
func runServeVhost(ctx context.Context, o serveVhostOptions, name string, ready chan<- struct{}) error {
	w, err := openImage(ctx, o.worker, name, nil)
	if err != nil {
		return err
	}
	defer w.Close()
	// Count what the guests read from the image (below any overlay), to set
	// against what the tiers fetched, as lode vm does for its NBD export.
	counted := vm.Count(w.Image)
	if len(w.Manifest.Hints) > 0 {
		go w.Image.Prefetch(ctx, w.Manifest.Hints, o.worker.Fetches)
	}
	var dev blockdev.Device = counted
	if o.overlay != "" {
		ov, err := blockdev.NewOverlay(counted, o.overlay)
		if err != nil {
			return err
		}
		defer ov.Close()
		dev = ov
	}
	l, err := worker.Listen("unix:" + o.socket)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.socket, err)
	}
	c := vhost.DefaultConfig()
	c.Log = logger
	c.Workers = o.workers
	c.Serial = "lode"
	srv := vhost.NewServer(dev, c)
	mode := "read-only"
	if o.overlay != "" {
		mode = "writes to " + o.overlay
	}
	fmt.Fprintf(stderr, "serving %s (%d bytes, %s) as vhost-user-blk on %s\n", w.Name, w.Image.Size(), mode, o.socket)
	if ready != nil {
		close(ready)
	}
	err = srv.Serve(ctx, l)
	w.WriteStats(stderr)
	if o.report != "" {
		if werr := writeServeReport(o.report, w, counted); werr != nil {
			return werr
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// writeServeReport writes the byte counts of a served image in the fields
// lode vm --report uses, so that a benchmark reads both the same way.
func writeServeReport(path string, w *worker.Image, counted *vm.CountingDevice) error {
	rep := vmReport{Image: w.Name, Disk: "lode"}
	fillTierReport(&rep, w, counted)
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the report %s: %w", path, err)
	}
	return nil
}
