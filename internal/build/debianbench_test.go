package build_test

import (
	"context"
	"os"
	"testing"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/lodetest"
)

// BenchmarkBuildDebian builds the Debian minbase + python3 rootfs tar that
// bench/build.sh times (lodetest.DebianRootfs: root and debootstrap, or the
// cached tar) with lode build's defaults (chunk-aligned, zstd) into a file
// store with a root: the work of the bench's default row, in a Go
// benchmark so that -cpuprofile and -memprofile cover it
// (docs/benchmarks.md, "Build rate").
func BenchmarkBuildDebian(b *testing.B) {
	src := "rootfs:" + lodetest.DebianRootfs(b)
	fi, err := os.Stat(src[len("rootfs:"):])
	if err != nil {
		b.Fatal(err)
	}
	kr := newKeyring(b)
	tmp := b.TempDir()
	b.SetBytes(fi.Size())
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		st := fileWithRoot(b)
		b.StartTimer()
		if _, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), build.Options{Source: src, Tenant: tenant, Name: "bench", TempDir: tmp,
			Compression: build.DefaultCompression, Ext4: ext4img.Options{Align: chunk.DefaultSize}}); err != nil {
			b.Fatal(err)
		}
	}
}
