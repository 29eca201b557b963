package fuse

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
)

// BenchmarkWarmSequentialRead reads one 128 MiB file sequentially through
// (a) a read-only loop mount of a local image file whose pages are cached
// and (b) MountImage over an in-memory Device with the same bytes. Before
// each read the file's ext4 pages are dropped (fadvise DONTNEED), so both
// sides go through the block layer while their backing data is "warm"
// (page cache resp. memory). It reports both throughputs and the ratio
// fuse/loop (goal ≥ 0.7).
//
//	go test -run=^$ -bench=WarmSequentialRead -benchtime=5x ./internal/blockdev/fuse
func BenchmarkWarmSequentialRead(b *testing.B) {
	requireMount(b)
	for _, pc := range []bool{false, true} {
		name := "directio"
		if pc {
			name = "pagecache"
		}
		b.Run(name, func(b *testing.B) { benchmarkWarmSequentialRead(b, Options{PageCache: pc}) })
	}
}

func benchmarkWarmSequentialRead(b *testing.B, o Options) {
	const fileSize = 128 << 20
	src := filepath.Join(b.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, fileSize)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.WriteFile(filepath.Join(src, "big"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	data = nil
	imgPath, img := makeImage(b, src, "160M")

	// (a) loop mount of the local file.
	loopDir := filepath.Join(b.TempDir(), "loop")
	os.Mkdir(loopDir, 0o755)
	dev, lf, err := attachLoop(imgPath, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Mount(dev, loopDir, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		lf.Close()
		b.Fatal(err)
	}
	lf.Close()
	defer func() {
		unmountDir(context.Background(), loopDir, 5*time.Second, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		detachLoop(ctx, dev)
	}()

	// (b) the FUSE stack.
	base := b.TempDir()
	fuseDir := filepath.Join(base, "mnt")
	os.Mkdir(fuseDir, 0o755)
	m, err := MountImage(context.Background(), fuseDir, blockdev.NewMemDevice(img), MountOptions{Options: o, StateDir: filepath.Join(base, "state")})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()

	buf := make([]byte, 1<<20)
	readCold := func(path string) time.Duration {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		start := time.Now()
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		if err != nil || n != fileSize {
			b.Fatalf("reading %s: %d bytes, %v", path, n, err)
		}
		return time.Since(start)
	}
	// Warm the backing side of both (local page cache, FUSE code paths).
	readCold(filepath.Join(loopDir, "big"))
	readCold(filepath.Join(fuseDir, "big"))
	var tLoop, tFUSE time.Duration
	b.SetBytes(fileSize)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		tLoop += readCold(filepath.Join(loopDir, "big"))
		tFUSE += readCold(filepath.Join(fuseDir, "big"))
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * fileSize / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(tLoop), "loop-MB/s")
	b.ReportMetric(mbps(tFUSE), "fuse-MB/s")
	b.ReportMetric(tLoop.Seconds()/tFUSE.Seconds(), "fuse/loop")
}
