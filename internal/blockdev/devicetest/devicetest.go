// Package devicetest is the conformance suite of blockdev.Device: every
// device (agent.Image, the overlay, the memory device) and every frontend
// seen from its client side (the FUSE file, an NBD export, a vhost-user-blk
// disk) runs Run against the bytes it must show.
//
// It owns no production behaviour and is imported only from _test.go files.
package devicetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
)

// Run checks d against want, the bytes it must show: Size, reads at
// aligned and unaligned offsets and lengths (inside, across 4 KiB and
// 512 KiB boundaries, up to and across the end with io.EOF and a short
// count, past the end), a zero-length read, and concurrent reads.
func Run(t *testing.T, d blockdev.Device, want []byte) {
	t.Helper()
	ctx := context.Background()
	size := int64(len(want))
	if got := d.Size(); got != size {
		t.Fatalf("Size() = %d, want %d", got, size)
	}
	type read struct {
		off int64
		n   int
	}
	reads := []read{{0, 0}, {0, 1}, {0, 4096}, {1, 4095}, {4095, 2}, {size / 2, 1}}
	for _, span := range []int64{4096, 512 << 10} {
		for b := span; b < size; b += span * 7 {
			reads = append(reads, read{b - 100, 200})
		}
	}
	if size >= 512<<10 {
		reads = append(reads, read{0, 512 << 10}, read{size - (512 << 10) - 3, 512 << 10})
	}
	reads = append(reads, read{size - 1, 1}, read{size - 10, 10}, read{max(0, size-4096), 8192}, read{size, 1}, read{size + 4096, 10})
	for _, r := range reads {
		if r.off < 0 {
			continue
		}
		t.Run(fmt.Sprintf("ReadAt(%d,%d)", r.off, r.n), func(t *testing.T) {
			p := make([]byte, r.n)
			n, err := d.ReadAt(ctx, p, r.off)
			end := min(r.off+int64(r.n), size)
			wantN := int(max(0, end-r.off))
			if n != wantN {
				t.Fatalf("ReadAt(%d, %d bytes) = %d, %v; want %d bytes", r.off, r.n, n, err, wantN)
			}
			short := wantN < r.n
			switch {
			case short && !errors.Is(err, io.EOF):
				t.Errorf("ReadAt(%d, %d bytes) short read of %d: err %v, want io.EOF", r.off, r.n, n, err)
			case !short && err != nil:
				t.Errorf("ReadAt(%d, %d bytes) = %v", r.off, r.n, err)
			}
			if wantN > 0 && !bytes.Equal(p[:n], want[r.off:end]) {
				t.Errorf("ReadAt(%d, %d bytes): bytes differ", r.off, r.n)
			}
		})
	}
	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := make([]byte, 6000)
				for i := range 16 {
					off := (int64(g*16+i) * 9973) % max(1, size-int64(len(p)))
					n, err := d.ReadAt(ctx, p, off)
					if err != nil && !errors.Is(err, io.EOF) || !bytes.Equal(p[:n], want[off:off+int64(n)]) {
						t.Errorf("concurrent ReadAt(%d) = %d, %v, or bytes differ", off, n, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}

// FileDevice is a blockdev.Device over an io.ReaderAt of known size: a
// frontend seen from its client side (the FUSE file, an NBD or vhost disk
// opened as a file).
type FileDevice struct {
	R io.ReaderAt
	N int64
}

func (f FileDevice) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return f.R.ReadAt(p, off)
}

func (f FileDevice) Size() int64 { return f.N }

var _ blockdev.Device = FileDevice{}
