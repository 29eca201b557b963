package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/dustin/go-humanize"
	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/worker"
	"github.com/spf13/cobra"
)

// newCacheCmd is `lode cache`: the shared cache fleet (docs/fleet.md).
func newCacheCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Run a node of the shared, erasure-coded chunk cache fleet",
	}
	var listen, mem, disk, diskSize string
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Serve shards over HTTP (GET/PUT/HEAD /v1/shards/..., /healthz, /metrics)",
		Long: `Serve a cache node: shards of chunk ciphertext under a memory budget and,
with --disk, a disk budget that memory evictions are demoted to. A node
restarted with the same --disk directory reuses its contents. Sizes accept
units (512MiB, 20GB) or plain bytes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			memBytes, err := humanize.ParseBytes(mem)
			if err != nil {
				return fmt.Errorf("parsing --mem %q: %w", mem, err)
			}
			worker.LimitMemory(int64(memBytes), logger)
			var diskBytes uint64
			if diskSize != "" {
				if diskBytes, err = humanize.ParseBytes(diskSize); err != nil {
					return fmt.Errorf("parsing --disk-size %q: %w", diskSize, err)
				}
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			reg := metrics.NewRegistry()
			srv, err := cachenode.NewServer(cachenode.ServerConfig{
				MemBytes: int64(memBytes), DiskDir: disk, DiskBytes: int64(diskBytes), Log: log, Registry: reg,
			})
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listening on %s: %w", listen, err)
			}
			log.Info("cache node serving", slog.String("listen", l.Addr().String()),
				slog.Uint64("mem", memBytes), slog.String("disk", disk), slog.Uint64("disk_size", diskBytes))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.Serve(ctx, l)
		},
	}
	f := serve.Flags()
	f.StringVar(&listen, "listen", fmt.Sprintf(":%d", fleetproto.DefaultPort), "address to serve on")
	f.StringVar(&mem, "mem", "1GiB", "memory budget for shards")
	f.StringVar(&disk, "disk", "", "directory for shards evicted from memory (optional)")
	f.StringVar(&diskSize, "disk-size", "", "disk budget (required with --disk)")
	cmd.AddCommand(serve)
	return cmd
}
