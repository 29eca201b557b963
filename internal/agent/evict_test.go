package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// TestDiskEvictionDuringReads: with a budget of one or two chunks, writers
// keep filling the disk cache (each Fill evicts) while readers fetch the
// same chunks. A chunk file unlinked while a reader has it open is read
// whole (Linux keeps the inode until the last close), so every Fetch
// returns either a miss or exactly the chunk's ciphertext — never an error
// or wrong bytes — and the agent above always returns the right plaintext.
func TestDiskEvictionDuringReads(t *testing.T) {
	tests := []struct {
		name   string
		budget int64 // in chunks
	}{
		{"one chunk", 1},
		{"two chunks", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ti := stdImage(t)
			cts := map[chunk.Name][]byte{}
			var names []chunk.Name
			var maxCT int64
			for _, i := range nonHoles(ti) {
				n := ti.m.Names[i]
				ct, err := ti.st.Get(context.Background(), store.ChunkKey(testRoot, n), nil)
				if err != nil {
					t.Fatal(err)
				}
				cts[n], names = ct, append(names, n)
				maxCT = max(maxCT, int64(len(ct)))
			}
			d, err := NewDiskCache(t.TempDir(), tt.budget*maxCT, nil)
			if err != nil {
				t.Fatal(err)
			}
			const workers, rounds = 4, 300
			var wg sync.WaitGroup
			errs := make(chan error, 2*workers)
			var hits [workers]int
			for w := range workers {
				wg.Add(2)
				go func() { // writer: every Fill evicts another chunk
					defer wg.Done()
					for k := range rounds {
						n := names[(k+w)%len(names)]
						if err := d.Fill(context.Background(), n, cts[n]); err != nil {
							errs <- fmt.Errorf("fill %s: %w", n, err)
							return
						}
					}
				}()
				go func() { // reader
					defer wg.Done()
					for k := range rounds {
						n := names[(k*7+w)%len(names)]
						b, err := d.Fetch(context.Background(), n, nil)
						if errors.Is(err, store.ErrNotFound) {
							continue
						}
						if err != nil {
							errs <- fmt.Errorf("fetch %s: %w", n, err)
							return
						}
						if !bytes.Equal(b, cts[n]) {
							errs <- fmt.Errorf("fetch %s: %d wrong bytes", n, len(b))
							return
						}
						hits[w]++
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			total := 0
			for _, h := range hits {
				total += h
			}
			if total == 0 {
				t.Error("no Fetch hit the cache: the test did not race reads with eviction")
			}
			if d.Bytes() > tt.budget*maxCT {
				t.Errorf("disk cache holds %d bytes, budget %d", d.Bytes(), tt.budget*maxCT)
			}
			if n, size := diskFiles(t, d); n != d.Len() || size != d.Bytes() {
				t.Errorf("files %d (%d bytes), index %d (%d bytes)", n, size, d.Len(), d.Bytes())
			}
		})
	}
}

// TestAgentReadsUnderTinyDiskBudget: concurrent readers of an image whose
// disk cache holds one chunk and whose memory cache is off never see an
// error or a wrong byte.
func TestAgentReadsUnderTinyDiskBudget(t *testing.T) {
	ti := stdImage(t)
	d, err := NewDiskCache(t.TempDir(), cs+chunk.Overhead, nil)
	if err != nil {
		t.Fatal(err)
	}
	im := openImage(t, ti, Config{Tiers: []Tier{d, NewOrigin(ti.st, testRoot)}, ReadAhead: 2, MaxConcurrentFetches: 4})
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for r := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, ti.m.ImageSize)
			for k := range 20 {
				off := int64((r+k)%12) * cs
				n, err := im.ReadAt(context.Background(), p[:ti.m.ImageSize-off], off)
				if err != nil {
					errs <- fmt.Errorf("reader %d at %d: %w", r, off, err)
					return
				}
				if !bytes.Equal(p[:n], ti.plain[off:]) {
					errs <- fmt.Errorf("reader %d at %d: wrong bytes", r, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	im.quiesce()
	if d.Len() > 1 {
		t.Errorf("disk cache holds %d chunks, budget one", d.Len())
	}
}
