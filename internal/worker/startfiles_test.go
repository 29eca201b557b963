package worker

import (
	"context"
	"slices"
	"testing"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/lodetest"
)

// TestPrefetchStartFiles opens the Debian image built with the default
// start set (/bin/sh's closure) and prefetches the closure of a run's
// replaced entrypoint, python3: afterwards reading every chunk of that
// closure the build's start set lacks must fetch nothing more from the
// origin (it does, one by one, without the prefetch).
func TestPrefetchStartFiles(t *testing.T) {
	tarball := lodetest.DebianRootfs(t)
	w := imagetest.NewWorld(t, "default")
	ctx := context.Background()
	if _, err := build.Build(ctx, w.St, w.Kr, w.Kr.StoreSecret(), build.Options{Source: "rootfs:" + tarball,
		Tenant: "default", Name: "deb", TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(ctx, w.St, w.Kr, "default", "deb", testOptions(t.TempDir()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	origin := func() int64 {
		var n int64
		for _, ts := range img.Image.Stats().Tiers {
			if ts.Tier == "origin" {
				n += ts.Hits
			}
		}
		return n
	}
	img.prefetchStartFiles(ctx, []string{"python3"}, 8)
	prefetched := origin()
	rs, _, err := ext4img.StartSet(imageReader{ctx, img.Image}, ext4img.StartSetOptions{Files: []string{"/usr/bin/python3"}})
	if err != nil {
		t.Fatal(err)
	}
	var extra []uint32
	for _, c := range ext4img.Chunks(rs, int64(img.Manifest.ChunkSize), img.Image.Size()) {
		if !slices.Contains(img.Manifest.Hints, c) {
			extra = append(extra, c)
		}
	}
	if len(extra) == 0 || prefetched == 0 {
		t.Fatalf("python3's closure adds %d chunks to the build's start set, %d fetched: want some", len(extra), prefetched)
	}
	buf := make([]byte, 1)
	for _, c := range extra {
		if _, err := img.Image.ReadAt(ctx, buf, int64(c)*int64(img.Manifest.ChunkSize)); err != nil {
			t.Fatalf("reading chunk %d: %v", c, err)
		}
	}
	if got := origin(); got != prefetched {
		t.Errorf("reading python3's %d chunks fetched %d more from the origin after the prefetch: want 0", len(extra), got-prefetched)
	}
}
