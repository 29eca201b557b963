package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/agent"
)

// fillOptions select the background fill (issue #9, agent.Image.Fill): after
// the start-up burst, fetch the rest of the image into the disk cache.
type fillOptions struct {
	on       bool
	after    time.Duration
	rate     string // BYTES/s with an optional K, M or G suffix; "" or 0 unlimited
	parallel int
}

func (o *fillOptions) bind(f *pflag.FlagSet) {
	f.BoolVar(&o.on, "fill", false, "after the start-up burst, fetch the rest of the image in the background (into the disk cache)")
	f.DurationVar(&o.after, "fill-after", 2*time.Second, "quiet period before the background fill starts: no read for this long (lode run also starts it at the first exec)")
	f.StringVar(&o.rate, "fill-rate", "", "background fill rate in bytes per second, e.g. 50M or 52428800 (default unlimited: bounded by --fill-parallel)")
	f.IntVar(&o.parallel, "fill-parallel", 2, "background fill fetches in flight")
}

// parseRate parses a rate in bytes per second: an integer with an optional
// K, M or G (powers of 1024) suffix and an optional "B/s" or "/s" unit.
// "" and "0" mean unlimited (0).
func parseRate(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "/s")
	t = strings.TrimSuffix(t, "B")
	if t == "" {
		return 0, nil
	}
	mult := int64(1)
	switch t[len(t)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	}
	if mult > 1 {
		t = t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("parsing rate %q: want BYTES/s, e.g. 50M or 52428800", s)
	}
	return n * mult, nil
}

// check validates the options before anything is opened.
func (o fillOptions) check() error {
	if _, err := parseRate(o.rate); err != nil {
		return err
	}
	if o.parallel < 1 {
		return fmt.Errorf("--fill-parallel %d must be at least 1", o.parallel)
	}
	return nil
}

// start runs the fill of im in the background if --fill is on; start, if
// not nil, starts it before the quiet period ends when closed. The fill
// stops when ctx ends or the image is closed.
func (o fillOptions) start(ctx context.Context, im *agent.Image, start <-chan struct{}) {
	if !o.on {
		return
	}
	rate, _ := parseRate(o.rate) // checked by check
	go func() {
		t0 := time.Now()
		res, err := im.Fill(ctx, agent.FillOptions{After: o.after, Start: start, Rate: rate, Parallel: o.parallel})
		lvl := slog.LevelInfo
		if err != nil && !errors.Is(err, agent.ErrClosed) && !errors.Is(err, context.Canceled) {
			lvl = slog.LevelWarn
		}
		logger.Log(context.Background(), lvl, "background fill", slog.String("image", im.Name()), slog.Int("chunks", res.Chunks),
			slog.Int64("bytes", res.Bytes), slog.Duration("took", time.Since(t0)), slog.Any("err", err))
	}()
}
