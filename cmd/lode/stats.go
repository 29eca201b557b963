package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/metrics"
)

// serveMetrics serves /metrics (and /healthz) on addr until stop is called.
func serveMetrics(addr string, reg *prometheus.Registry) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(reg))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server stopped", "addr", addr, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// printStats writes the per-tier statistics of a worker's image.
func printStats(out io.Writer, w *worker) {
	s := w.image.Stats()
	reads := s.MemHits
	for _, t := range s.Tiers {
		reads += t.Hits
	}
	share := func(n int64) float64 {
		if reads == 0 {
			return 0
		}
		return 100 * float64(n) / float64(reads)
	}
	fmt.Fprintf(out, "image %s: read %s of %s (%.2f%% of the image in %d distinct chunks; %d hole reads)\n",
		w.name, humanize.IBytes(uint64(s.DistinctBytesRead)), humanize.IBytes(uint64(s.ImageSize)),
		100*s.ShareRead(), s.DistinctChunksRead, s.Holes)
	fmt.Fprintf(out, "  chunk reads by tier: memory %d (%.1f%%)", s.MemHits, share(s.MemHits))
	var fetched int64
	for _, t := range s.Tiers {
		fmt.Fprintf(out, ", %s %d (%.1f%%, %s)", t.Tier, t.Hits, share(t.Hits), humanize.IBytes(uint64(t.Bytes)))
		fetched += t.Bytes
	}
	fmt.Fprintf(out, "\n  fetched %s in all; %d read-aheads, %d fetch errors, %d verification failures\n",
		humanize.IBytes(uint64(fetched)), s.ReadAheads, s.FetchErrors, s.VerifyFailures)
}
