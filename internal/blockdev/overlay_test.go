package blockdev_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if n, err := d.ReadAt(context.Background(), b, 0); err != nil || n != len(b) {
		t.Fatalf("ReadAt(0, %d) = %d, %v", len(b), n, err)
	}
	return b
}

func TestMemDevice(t *testing.T) {
	d := blockdev.NewMemDevice([]byte("hello world"))
	ctx := context.Background()
	tests := []struct {
		name    string
		off     int64
		n       int
		want    string
		wantErr error
	}{
		{"inside", 6, 5, "world", nil},
		{"short at end", 6, 10, "world", io.EOF},
		{"at end", 11, 1, "", io.EOF},
		{"negative", -1, 1, "", blockdev.ErrOutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, tc.n)
			n, err := d.ReadAt(ctx, p, tc.off)
			if string(p[:n]) != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("ReadAt(%d, %d) = %q, %v, want %q, %v", tc.off, tc.n, p[:n], err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestOverlayMatchesModel(t *testing.T) {
	const size = 1<<20 + 1234 // not a multiple of the block size
	base := randomBytes(1, size)
	baseCopy := bytes.Clone(base)
	path := filepath.Join(t.TempDir(), "cow")
	o, err := blockdev.NewOverlay(blockdev.NewMemDevice(base), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	model := bytes.Clone(base)
	r := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 300; i++ {
		off := r.Int64N(size)
		n := r.Int64N(min(size-off, 3*blockdev.OverlayBlockSize) + 1)
		if r.IntN(4) == 0 {
			if err := o.ZeroAt(ctx, off, n); err != nil {
				t.Fatalf("ZeroAt(%d, %d): %v", off, n, err)
			}
			clear(model[off : off+n])
		} else {
			p := randomBytes(uint64(i+100), int(n))
			if _, err := o.WriteAt(ctx, p, off); err != nil {
				t.Fatalf("WriteAt(%d, %d): %v", off, n, err)
			}
			copy(model[off:], p)
		}
		// Random read of a window.
		roff := r.Int64N(size)
		rn := r.Int64N(size-roff) + 1
		got := make([]byte, rn)
		if _, err := o.ReadAt(ctx, got, roff); err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", roff, rn, err)
		}
		if !bytes.Equal(got, model[roff:roff+rn]) {
			t.Fatalf("after op %d: ReadAt(%d, %d) differs from model", i, roff, rn)
		}
	}
	if !bytes.Equal(base, baseCopy) {
		t.Fatal("base device bytes changed")
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopen: state as of the last flush (Close flushes).
	o2, err := blockdev.NewOverlay(blockdev.NewMemDevice(base), path)
	if err != nil {
		t.Fatal(err)
	}
	defer o2.Close()
	if got := readAll(t, o2); !bytes.Equal(got, model) {
		t.Fatal("reopened overlay differs from model")
	}
	if _, err := o2.WriteAt(ctx, []byte{1, 2}, size-1); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("WriteAt past end = %v, want ErrOutOfRange", err)
	}
	// Another base size must be refused.
	if _, err := blockdev.NewOverlay(blockdev.NewMemDevice(base[:size-1]), path); !errors.Is(err, blockdev.ErrOverlayMismatch) {
		t.Errorf("NewOverlay over another size = %v, want ErrOverlayMismatch", err)
	}
}

func BenchmarkOverlayRead_128K(b *testing.B) {
	const size = 64 << 20
	base := blockdev.NewMemDevice(randomBytes(3, size))
	o, err := blockdev.NewOverlay(base, filepath.Join(b.TempDir(), "cow"))
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	// Every 16th block written: reads alternate between the two sides.
	blk := make([]byte, blockdev.OverlayBlockSize)
	for off := int64(0); off < size; off += 16 * blockdev.OverlayBlockSize {
		if _, err := o.WriteAt(ctx, blk, off); err != nil {
			b.Fatal(err)
		}
	}
	p := make([]byte, 128<<10)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		off := int64(i%(size/len(p))) * int64(len(p))
		if _, err := o.ReadAt(ctx, p, off); err != nil {
			b.Fatal(err)
		}
	}
}
