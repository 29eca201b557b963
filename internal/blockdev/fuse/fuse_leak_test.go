package fuse

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

// TestNoLeakMounts mounts a FUSE file 20 times, reads it through the
// kernel and unmounts it: goroutines and file descriptors (the /dev/fuse
// descriptor of each mount included) return to where they were.
func TestNoLeakMounts(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE)
	img := randomBytes(5, 1<<20)
	dev := blockdev.NewMemDevice(img)
	r0 := lodetest.Count(t)
	for i := range 20 {
		dir := filepath.Join(t.TempDir(), "m")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		m, err := ServeFile(context.Background(), dir, "disk.img", dev, Options{})
		if err != nil {
			t.Fatalf("ServeFile #%d = %v", i, err)
		}
		got, err := os.ReadFile(m.Path())
		if err != nil || !bytes.Equal(got, img) {
			t.Errorf("reading the mounted file #%d = %d bytes, %v", i, len(got), err)
		}
		if err := m.Unmount(); err != nil {
			t.Fatalf("Unmount #%d = %v", i, err)
		}
		m.Wait()
	}
	lodetest.CheckNoLeak(t, "20 FUSE mounts served and unmounted", r0, 2)
}
