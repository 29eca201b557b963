package blockdev_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/devicetest"
)

// The memory device and the overlay (untouched, and with writes over its
// base) pass the Device suite.
func TestDeviceConformance(t *testing.T) {
	base := randomBytes(7, 3<<20+123)
	t.Run("MemDevice", func(t *testing.T) {
		devicetest.Run(t, blockdev.NewMemDevice(base), base)
	})
	t.Run("Overlay", func(t *testing.T) {
		ov, err := blockdev.NewOverlay(blockdev.NewMemDevice(base), filepath.Join(t.TempDir(), "cow"))
		if err != nil {
			t.Fatal(err)
		}
		defer ov.Close()
		devicetest.Run(t, ov, base)
	})
	t.Run("OverlayWritten", func(t *testing.T) {
		ov, err := blockdev.NewOverlay(blockdev.NewMemDevice(base), filepath.Join(t.TempDir(), "cow"))
		if err != nil {
			t.Fatal(err)
		}
		defer ov.Close()
		want := append([]byte(nil), base...)
		patch := randomBytes(8, 10000)
		for _, off := range []int64{0, 4000, 1 << 20, int64(len(base)) - int64(len(patch))} {
			if _, err := ov.WriteAt(context.Background(), patch, off); err != nil {
				t.Fatal(err)
			}
			copy(want[off:], patch)
		}
		devicetest.Run(t, ov, want)
	})
}
