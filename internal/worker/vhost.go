package worker

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/vhost"
	"github.com/lode-dev/lode/internal/vm"
)

// VhostOptions configure ServeVhost: the flags of lode serve-vhost.
type VhostOptions struct {
	Socket string // unix socket to listen on
	// SocketMode is the socket's file mode (0: 0600).
	SocketMode os.FileMode
	Overlay    string // copy-on-write file for writes; "" read-only
	Workers    int    // requests served at once per VM
	Report     string // on exit, write ServeReport as JSON here
	Fetches    int    // the startup profile's prefetch parallelism
	ErrOut     io.Writer
}

// ServeVhost serves w as a vhost-user-blk backend (internal/blockdev/vhost)
// until ctx ends, counting what the guests read. ready, if not nil, is
// closed once the socket listens.
func (w *Image) ServeVhost(ctx context.Context, o VhostOptions, ready chan<- struct{}) error {
	// Count what the guests read from the image (below any overlay), to set
	// against what the tiers fetched, as lode vm does for its NBD export.
	counted := vm.Count(w.Image)
	w.Prefetch(ctx, o.Fetches)
	var dev blockdev.Device = counted
	if o.Overlay != "" {
		ov, err := blockdev.NewOverlay(counted, o.Overlay)
		if err != nil {
			return err
		}
		defer ov.Close()
		dev = ov
	}
	sockMode := o.SocketMode
	if sockMode == 0 {
		sockMode = 0o600
	}
	l, err := ListenMode("unix:"+o.Socket, sockMode)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.Socket, err)
	}
	c := vhost.DefaultConfig()
	c.Log = w.log
	c.Workers = o.Workers
	c.Serial = "lode"
	srv := vhost.NewServer(dev, c)
	mode := "read-only"
	if o.Overlay != "" {
		mode = "writes to " + o.Overlay
	}
	fmt.Fprintf(o.ErrOut, "serving %s (%d bytes, %s) as vhost-user-blk on %s\n", w.Name, w.Image.Size(), mode, o.Socket)
	if ready != nil {
		close(ready)
	}
	err = srv.Serve(ctx, l)
	w.WriteStats(o.ErrOut)
	if o.Report != "" {
		if werr := w.ServeReport(counted).WriteReport(o.Report); werr != nil {
			return werr
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}
