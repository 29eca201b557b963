package agent

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/store"
)

// nonHoles returns the indexes of ti's non-hole chunks.
func nonHoles(ti *testImage) []int {
	var out []int
	for i, n := range ti.m.Names {
		if !n.IsZero() {
			out = append(out, i)
		}
	}
	return out
}

func TestFillFetchesUnreadChunks(t *testing.T) {
	tests := []struct {
		name      string
		disk      bool
		read      []int // chunks read before the fill
		onDisk    []int // chunks put in the disk cache before the fill
		wantFills int   // chunks the fill fetches
		wantInMem []int // non-hole chunks in the memory cache afterwards
	}{
		{"cold, disk keeps the fill", true, nil, nil, 8, nil},
		{"read chunks are skipped; those just after the reader go to memory", true, []int{8, 9}, nil, 6, []int{8, 9, 11}},
		{"a streaming reader gets the fill in memory", true, []int{0, 1}, nil, 6, []int{0, 1, 3, 4, 7, 8, 9, 11}},
		{"chunks on disk are skipped", true, nil, []int{3, 4, 7}, 5, nil},
		{"no disk: the fill goes to memory", false, []int{0}, nil, 7, []int{0, 1, 3, 4, 7, 8, 9, 11}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ti := stdImage(t)
			org := counting(NewOrigin(ti.st, testRoot))
			tiers := []Tier{org}
			var d *DiskCache
			if tt.disk {
				var err error
				if d, err = NewDiskCache(t.TempDir(), 1<<20, nil); err != nil {
					t.Fatal(err)
				}
				for _, i := range tt.onDisk {
					ct, err := ti.st.Get(context.Background(), store.ChunkKey(testRoot, ti.m.Names[i]), nil)
					if err != nil {
						t.Fatal(err)
					}
					if err := d.Fill(context.Background(), ti.m.Names[i], ct); err != nil {
						t.Fatal(err)
					}
				}
				tiers = []Tier{d, org}
			}
			mc := NewMemCache(1 << 20)
			im := openImage(t, ti, Config{Mem: mc, Tiers: tiers, MaxConcurrentFetches: 8})
			for _, i := range tt.read {
				mustRead(t, im, ti, i)
			}
			im.quiesce()
			before := org.total()
			res, err := im.Fill(context.Background(), FillOptions{After: -1, Parallel: 2, Batch: 3})
			if err != nil {
				t.Fatal(err)
			}
			im.quiesce()
			if res.Chunks != tt.wantFills || org.total()-before != tt.wantFills || im.Stats().Filled != int64(tt.wantFills) {
				t.Errorf("fill started %d, origin fetched %d, Stats.Filled %d; want %d", res.Chunks, org.total()-before, im.Stats().Filled, tt.wantFills)
			}
			var wantBytes int64
			for _, i := range nonHoles(ti) {
				if !slices.Contains(tt.read, i) && !slices.Contains(tt.onDisk, i) {
					wantBytes += int64(im.chunkLen(i))
				}
			}
			if res.Bytes != wantBytes {
				t.Errorf("fill bytes %d, want %d", res.Bytes, wantBytes)
			}
			var inMem []int
			for _, i := range nonHoles(ti) {
				if mc.Contains(ti.m.Ref(i)) {
					inMem = append(inMem, i)
				}
				if d != nil && !d.Has(ti.m.Names[i]) {
					t.Errorf("chunk %d not in the disk cache after the fill", i)
				}
			}
			if diff := cmp.Diff(tt.wantInMem, inMem); diff != "" {
				t.Errorf("memory cache chunks (-want +got):\n%s", diff)
			}
			// Every byte still reads back right, now from the caches.
			p := make([]byte, ti.m.ImageSize)
			if _, err := im.ReadAt(context.Background(), p, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, ti.plain) {
				t.Error("image bytes differ after the fill")
			}
			im.quiesce()
			if got := org.total() - before; got != tt.wantFills {
				t.Errorf("origin fetches after the full read %d, want %d (the fill's only)", got, tt.wantFills)
			}
		})
	}
}

func mustRead(t *testing.T, im *Image, ti *testImage, i int) {
	t.Helper()
	off := int64(i) * cs
	p := make([]byte, im.chunkLen(i))
	if _, err := im.ReadAt(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, ti.plain[off:off+int64(len(p))]) {
		t.Fatalf("chunk %d: wrong bytes", i)
	}
}

func TestFillStartAndStop(t *testing.T) {
	tests := []struct {
		name       string
		opts       func(start chan struct{}) FillOptions
		closeStart bool
		cancel     bool
		closeImage bool
		wantErr    error
		wantChunks int
	}{
		{"start channel overrides the quiet period", func(s chan struct{}) FillOptions {
			return FillOptions{After: time.Hour, Start: s}
		}, true, false, false, nil, 8},
		{"cancelled while waiting for quiet", func(s chan struct{}) FillOptions {
			return FillOptions{After: time.Hour, Start: s}
		}, false, true, false, context.Canceled, 0},
		{"image closed while waiting", func(s chan struct{}) FillOptions {
			return FillOptions{After: time.Hour, Start: s}
		}, false, false, true, ErrClosed, 0},
		{"rate-limited fill completes", func(s chan struct{}) FillOptions {
			return FillOptions{After: -1, Rate: 1 << 30, Batch: 2}
		}, false, false, false, nil, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ti := stdImage(t)
			d, err := NewDiskCache(t.TempDir(), 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{d, NewOrigin(ti.st, testRoot)}})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			start := make(chan struct{})
			type out struct {
				res FillResult
				err error
			}
			done := make(chan out, 1)
			go func() {
				res, err := im.Fill(ctx, tt.opts(start))
				done <- out{res, err}
			}()
			switch {
			case tt.closeStart:
				close(start)
			case tt.cancel:
				cancel()
			case tt.closeImage:
				im.Close()
			}
			o := <-done
			if !errors.Is(o.err, tt.wantErr) || (tt.wantErr == nil) != (o.err == nil) {
				t.Fatalf("Fill error %v, want %v", o.err, tt.wantErr)
			}
			if o.res.Chunks != tt.wantChunks {
				t.Errorf("Fill started %d chunks, want %d", o.res.Chunks, tt.wantChunks)
			}
		})
	}
}

// TestFillWaitsForQuiet: while a read is in progress (blocked on the origin)
// a fill with a short quiet period does not start; once it ends, the fill
// runs.
func TestFillWaitsForQuiet(t *testing.T) {
	ti := stdImage(t)
	d, err := NewDiskCache(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	org := counting(NewOrigin(ti.st, testRoot))
	org.gate = make(chan struct{})
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{d, org}})
	readDone := make(chan error, 1)
	go func() {
		p := make([]byte, cs)
		_, err := im.ReadAt(context.Background(), p, 0)
		readDone <- err
	}()
	for org.total() == 0 { // the read is waiting on the gate
		time.Sleep(time.Millisecond)
	}
	done := make(chan FillResult, 1)
	go func() {
		res, err := im.Fill(context.Background(), FillOptions{After: 10 * time.Millisecond, Poll: time.Millisecond})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	time.Sleep(200 * time.Millisecond)
	if n := org.total(); n != 1 {
		t.Errorf("origin fetches %d while a read was in progress, want 1 (the read's)", n)
	}
	close(org.gate)
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.Chunks != 7 {
		t.Errorf("the fill started %d chunks after the read ended, want 7", res.Chunks)
	}
}
