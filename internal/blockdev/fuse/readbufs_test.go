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
