package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/metrics"
)

type serveNBDOptions struct {
	listen  string
	export  string
	overlay string
	metrics string
	worker  workerOptions
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
	o.worker.bind(f)
	return cmd
}

func listen(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		// Remove a stale socket of a previous run, and nothing else: a
		// mistyped path must not delete a file.
		if fi, err := os.Lstat(p); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return nil, fmt.Errorf("unix:%s exists and is not a socket", p)
			}
			os.Remove(p)
		}
		if err := os.MkdirAll(dirOf(p), 0o755); err != nil {
			return nil, err
		}
		return net.Listen("unix", p)
	}
	return net.Listen("tcp", addr)
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}

func runServeNBD(ctx context.Context, o serveNBDOptions, name string) error {
	reg := metrics.NewRegistry()
	w, err := openWorker(ctx, o.worker, name, reg)
	if err != nil {
		return err
	}
	defer w.Close()
	dev, closeDev, err := w.device(ctx, o.overlay, o.worker.fetches)
	if err != nil {
		return err
	}
	defer closeDev()
	export := o.export
	if export == "" {
		export = name
	}
	l, err := listen(o.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.listen, err)
	}
	if o.metrics != "" {
		stop, err := serveMetrics(o.metrics, reg)
		if err != nil {
			return err
		}
		defer stop()
	}
	c := nbd.DefaultConfig()
	c.Log = logger
	srv := nbd.NewServer(map[string]nbd.Export{export: {Device: dev, Description: w.name}}, c)
	fmt.Fprintf(stderr, "serving %s (%d bytes) as NBD export %q on %s\n", w.name, w.image.Size(), export, o.listen)
	err = srv.Serve(ctx, l)
	printStats(stderr, w)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
