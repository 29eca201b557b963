package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/worker"
)

func init() { extraCommands = append(extraCommands, newServeVhostCmd) }

type serveVhostOptions struct {
	socket  string
	overlay string
	workers int
	report  string
	worker  worker.Options
	expose  exposeOptions
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
	o.expose.bind(f, false)
	bindWorker(f, &o.worker)
	return cmd
}

// runServeVhost wires lode serve-vhost (worker.Image.ServeVhost). ready, if
// not nil, is closed once the socket listens.
func runServeVhost(ctx context.Context, o serveVhostOptions, name string, ready chan<- struct{}) error {
	sockMode, err := o.expose.mode()
	if err != nil {
		return err
	}
	w, err := openImage(ctx, o.worker, name, nil)
	if err != nil {
		return err
	}
	defer w.Close()
	return w.ServeVhost(ctx, worker.VhostOptions{Socket: o.socket, SocketMode: sockMode, Overlay: o.overlay, Workers: o.workers,
		Report: o.report, Fetches: o.worker.Fetches, ErrOut: stderr}, ready)
}
