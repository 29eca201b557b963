package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lode-dev/lode/internal/oci"
)

// runEntries writes a gzipped rootfs tar of n empty files (1000 per
// directory) and flattens it with the default options, reporting the
// outcome, the time to refuse or accept it, and the peak RSS.
func runEntries(ctx context.Context, n int) error {
	dir, err := os.MkdirTemp("", "lode-entries-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "rootfs.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	mt := time.Unix(1700000000, 0)
	entries := 0
	for i := 0; entries < n; i++ {
		if i%1000 == 0 {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%05d/", i/1000), Mode: 0o755, ModTime: mt})
			entries++
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%05d/f%d", i/1000, i), Mode: 0o644, ModTime: mt}); err != nil {
			return err
		}
		entries++
	}
	tw.Close()
	zw.Close()
	f.Close()
	st, _ := os.Stat(p)
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	im, err := oci.Open(ctx, "rootfs:"+p)
	if err != nil {
		return err
	}
	defer im.Close()
	o := oci.DefaultFlattenOptions()
	start := time.Now()
	_, ferr := oci.Flatten(ctx, im, io.Discard, o)
	took := time.Since(start)
	outcome := "accepted"
	if ferr != nil {
		outcome = "refused: " + ferr.Error()
	}
	fmt.Printf("entries: %d tar entries (%s gzipped), MaxEntries %d: %s after %v; peak RSS %s\n",
		entries, mib(st.Size()), o.MaxEntries, outcome, took.Round(time.Millisecond), mib(procStatus(0, "VmHWM")))
	if entries > o.MaxEntries && !errors.Is(ferr, oci.ErrUnsafeEntry) {
		return fmt.Errorf("an image of %d entries was not refused: %v", entries, ferr)
	}
	return nil
}
