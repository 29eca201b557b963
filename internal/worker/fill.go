package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/lode-dev/lode/internal/agent"
)

// FillOptions configure the background fill of an image (the --fill flags):
// after the start-up burst, the rest of the image is fetched into the
// caches.
type FillOptions struct {
	On    bool
	After time.Duration
	// Rate is BYTES/s with an optional K, M or G suffix; "" or 0 unlimited.
	Rate     string
	Parallel int
}

// ParseRate parses a --fill-rate value: BYTES/s with an optional K, M or G
// suffix (binary), e.g. 50M or 52428800; "" is 0, unlimited.
func ParseRate(s string) (int64, error) {
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

// Check validates the options when the fill is on.
func (o FillOptions) Check() error {
	if !o.On {
		return nil
	}
	if _, err := ParseRate(o.Rate); err != nil {
		return err
	}
	if o.Parallel < 1 {
		return fmt.Errorf("--fill-parallel %d must be at least 1", o.Parallel)
	}
	return nil
}

// Start fills im in the background when the fill is on (start, if not
// nil, starts it before the quiet period ends) and logs the outcome on log.
// Check must have passed.
func (o FillOptions) Start(ctx context.Context, im *agent.Image, start <-chan struct{}, log *slog.Logger) {
	if !o.On {
		return
	}
	rate, _ := ParseRate(o.Rate) // checked by Check
	go func() {
		t0 := time.Now()
		res, err := im.Fill(ctx, agent.FillOptions{After: o.After, Start: start, Rate: rate, Parallel: o.Parallel})
		lvl := slog.LevelInfo
		if err != nil && !errors.Is(err, agent.ErrClosed) && !errors.Is(err, context.Canceled) {
			lvl = slog.LevelWarn
		}
		log.Log(context.Background(), lvl, "background fill", slog.String("image", im.Name()), slog.Int("chunks", res.Chunks),
			slog.Int64("bytes", res.Bytes), slog.Duration("took", time.Since(t0)), slog.Any("err", err))
	}()
}
