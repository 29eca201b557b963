package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/worker"
)

type serveNBDOptions struct {
	listen  string
	export  string
	overlay string
	metrics string
	worker  worker.Options
	expose  exposeOptions
}

func newServeNBDCmd() *cobra.Command {
	var o serveNBDOptions
	cmd := &cobra.Command{
		Use:   "serve-nbd NAME --listen ADDR|unix:PATH",
		Short: "Export an image over NBD (read-only, or copy-on-write with --overlay)",
		Long: `Serve-nbd exports the image as an NBD block device (fixed newstyle protocol,
NBD_OPT_GO/INFO, block size info) that VMs, qemu-img, nbdcopy and nbdfuse can
read on demand. The export is read-only unless --overlay names a local file
that receives the writes (the image itself is never changed).`,
		Example: `  lode serve-nbd app --listen unix:/run/lode/app.sock
  nbdinfo 'nbd+unix:///app?socket=/run/lode/app.sock'
  lode serve-nbd app --listen 127.0.0.1:10809 --overlay /var/lib/vm/app.cow
  qemu-system-x86_64 … -drive file=nbd:127.0.0.1:10809:exportname=app,format=raw`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServeNBD(cmd.Context(), o, args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "unix:"+"/run/lode/nbd.sock", "address to listen on: HOST:PORT or unix:PATH")
	f.StringVar(&o.export, "export", "", "export name (default: the image name)")
	f.StringVar(&o.overlay, "overlay", "", "copy-on-write file for writes (makes the export writable)")
	f.StringVar(&o.metrics, "metrics-listen", "", "serve Prometheus /metrics on this address")
	o.expose.bind(f, true)
	bindWorker(f, &o.worker)
	return cmd
}

func runServeNBD(ctx context.Context, o serveNBDOptions, name string) error {
	tlsConf, err := o.expose.tls()
	if err != nil {
		return err
	}
	if err := nbd.CheckListen(o.listen, tlsConf != nil, o.expose.insecure); err != nil {
		return err
	}
	mode, err := o.expose.mode()
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	w, err := openImage(ctx, o.worker, name, reg)
	if err != nil {
		return err
	}
	defer w.Close()
	dev, closeDev, err := w.Device(ctx, o.overlay, o.worker.Fetches)
	if err != nil {
		return err
	}
	defer closeDev()
	export := o.export
	if export == "" {
		export = name
	}
	l, err := worker.ListenMode(o.listen, mode)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.listen, err)
	}
	if o.metrics != "" {
		stop, err := metrics.Serve(o.metrics, reg, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	c := nbd.DefaultConfig()
	c.Log = logger
	c.TLS = tlsConf
	srv := nbd.NewServer(map[string]nbd.Export{export: {Device: dev, Description: w.Name}}, c)
	fmt.Fprintf(stderr, "serving %s (%d bytes) as NBD export %q on %s\n", w.Name, w.Image.Size(), export, o.listen)
	err = srv.Serve(ctx, l)
	w.WriteStats(stderr)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
