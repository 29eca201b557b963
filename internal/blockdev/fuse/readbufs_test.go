package fuse

import (
	"runtime"
	"testing"
)

// TestReadBuffersSurviveGC: READ reply buffers returned between requests
// are handed out again after garbage collections (a sync.Pool would have
// dropped them), up to the list's bound, and never smaller than asked.
func TestReadBuffersSurviveGC(t *testing.T) {
	l := make(readBufList, 2)
	a, b, c := l.get(64<<10), l.get(64<<10), l.get(64<<10)
	l.put(a)
	l.put(b)
	l.put(c) // over the bound: dropped
	runtime.GC()
	runtime.GC()
	got := map[*[]byte]bool{l.get(64 << 10): true, l.get(64 << 10): true}
	if !got[a] || !got[b] {
		t.Errorf("after GC the list handed out new buffers, not the two kept")
	}
	if d := l.get(64 << 10); d == c {
		t.Errorf("the list kept more buffers than its bound")
	}
	l.put(a)
	if e := l.get(128 << 10); len(*e) < 128<<10 {
		t.Errorf("get(128 KiB) = %d bytes", len(*e))
	}
}

func TestWarmReadBuffers(t *testing.T) {
	for _, tc := range []struct {
		name          string
		n, maxRead    int
		wantN, wantSz int
	}{
		{"three of 16 KiB", 3, 16 << 10, 3, 16 << 10},
		{"default size", 1, 0, 1, 1 << 20},
		{"more than the list keeps", cap(readBufs) + 5, 4096, cap(readBufs), 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for len(readBufs) > 0 {
				<-readBufs
			}
			WarmReadBuffers(tc.n, tc.maxRead)
			if len(readBufs) != tc.wantN {
				t.Fatalf("%d buffers written ahead, want %d", len(readBufs), tc.wantN)
			}
			for len(readBufs) > 0 {
				if bp := <-readBufs; len(*bp) != tc.wantSz {
					t.Fatalf("buffer of %d bytes, want %d", len(*bp), tc.wantSz)
				}
			}
		})
	}
}
