package fuse

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

// leakCounts returns the goroutines and open file descriptors of the
// process.
func leakCounts(t testing.TB) (goroutines, fds int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return runtime.NumGoroutine(), len(ents)
}

// checkNoLeak waits up to 10 s for the goroutine and fd counts to come back
// within tol of the baseline, then reports what is left.
func checkNoLeak(t testing.TB, what string, g0, f0, tol int) {
	t.Helper()
	var g, f int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		g, f = leakCounts(t)
		if (g <= g0+tol && f <= f0+tol) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("leak check %s: goroutines %d -> %d, fds %d -> %d", what, g0, g, f0, f)
	if g > g0+tol {
		buf := make([]byte, 1<<20)
		t.Errorf("%s: %d goroutines after, %d before (tolerance %d)\n%s", what, g, g0, tol, buf[:runtime.Stack(buf, true)])
	}
	if f > f0+tol {
		t.Errorf("%s: %d open fds after, %d before (tolerance %d)", what, f, f0, tol)
	}
}

// TestNoLeakMounts mounts a FUSE file 20 times, reads it through the
// kernel and unmounts it: goroutines and file descriptors (the /dev/fuse
// descriptor of each mount included) return to where they were.
func TestNoLeakMounts(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE)
	img := randomBytes(5, 1<<20)
	dev := blockdev.NewMemDevice(img)
	g0, f0 := leakCounts(t)
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
	checkNoLeak(t, "20 FUSE mounts served and unmounted", g0, f0, 2)
}
