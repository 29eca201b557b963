package gc

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Collector. Zero durations and counts take the value
// of DefaultConfig; negative ones are invalid.
type Config struct {
	// RotateAfter is how long a root stays active before a pass replaces
	// it. Default 7 days: a week of builds shares one root's dedup, and a
	// deleted image's unique chunks are gone within about RotateAfter +
	// BuildTimeout + Grace.
	RotateAfter time.Duration
	// Grace is how long an expired root stays readable before deletion. It
	// must be longer than any mount may keep reading from a root after its
	// image was repointed (agents re-resolve pointers; see docs/gc.md).
	// Default 72 h: a weekend plus a day for an operator to notice alarms.
	Grace time.Duration
	// BuildTimeout bounds how long a build may run after it resolved the
	// active root. A retired root is not expired until it has been retired
	// this long, so builds that chose it before rotation have finished
	// writing their pointers. Default 1 h.
	BuildTimeout time.Duration
	// DryRun reports what a pass would do, and how many bytes it would
	// copy and free, without writing or deleting anything.
	DryRun bool
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log receives one line per action (default: discarded).
	Log *slog.Logger
	// Metrics, if set, is updated after every pass.
	Metrics *Metrics
	// Concurrency bounds concurrent object copies and deletions. Default
	// 8: enough to hide S3 latency without flooding a directory store.
	Concurrency int
}

// DefaultConfig returns the defaults described on Config's fields.
func DefaultConfig() Config {
	return Config{
		RotateAfter:  7 * 24 * time.Hour,
		Grace:        72 * time.Hour,
		BuildTimeout: time.Hour,
		Now:          time.Now,
		Log:          slog.New(slog.DiscardHandler),
		Concurrency:  8,
	}
}

// Validate reports every invalid field at once.
func (c Config) Validate() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"rotate-after", c.RotateAfter}, {"grace", c.Grace}, {"build-timeout", c.BuildTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v: must not be negative", d.name, d.v))
		}
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("concurrency %d: must not be negative", c.Concurrency))
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.RotateAfter == 0 {
		c.RotateAfter = d.RotateAfter
	}
	if c.Grace == 0 {
		c.Grace = d.Grace
	}
	if c.BuildTimeout == 0 {
		c.BuildTimeout = d.BuildTimeout
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	if c.Log == nil {
		c.Log = d.Log
	}
	if c.Concurrency == 0 {
		c.Concurrency = d.Concurrency
	}
}
