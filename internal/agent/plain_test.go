package agent

import (
	"errors"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/lodetest"
)

// TestNewPlainPrefaults: a plaintext buffer comes with its pages mapped, so
// opening a chunk into it does not fault once per page.
func TestNewPlainPrefaults(t *testing.T) {
	lodetest.Require(t, lodetest.Holds(func() error {
		if !prefault(make([]byte, 1<<20)) {
			return errors.New("needs MADV_POPULATE_WRITE (Linux 5.14)")
		}
		return nil
	}()))
	for _, n := range []int{512 << 10, 8 << 20} {
		b := newPlain(n)
		if len(b) != 0 || cap(b) != n {
			t.Fatalf("newPlain(%d): len %d cap %d", n, len(b), cap(b))
		}
		const page = 4096
		p := uintptr(unsafe.Pointer(unsafe.SliceData(b[:n])))
		start := (p + page - 1) &^ (page - 1)
		end := (p + uintptr(n)) &^ (page - 1)
		vec := make([]byte, (end-start)/page)
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, start, end-start, uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
			t.Fatal(errno)
		}
		missing := 0
		for _, v := range vec {
			if v&1 == 0 {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("newPlain(%d): %d of %d pages not mapped", n, missing, len(vec))
		}
	}
}

// TestFreeListSurvivesGC: a buffer returned between fetches is handed out
// again after garbage collections (a sync.Pool would have dropped it), and
// the list holds no more than its bound.
func TestFreeListSurvivesGC(t *testing.T) {
	l := make(freeList, 2)
	a, b, c := l.get(1<<10), l.get(1<<10), l.get(1<<10)
	*a = append(*a, 'x')
	l.put(a)
	l.put(b)
	l.put(c) // over the bound: dropped
	runtime.GC()
	runtime.GC()
	got := map[*[]byte]bool{l.get(1 << 10): true, l.get(1 << 10): true}
	if !got[a] || !got[b] {
		t.Errorf("after GC the list handed out new buffers, not the two kept")
	}
	if len(*a) != 0 {
		t.Errorf("a reused buffer is not empty: len %d", len(*a))
	}
	if d := l.get(1 << 10); d == c {
		t.Errorf("the list kept more buffers than its bound")
	}
	if e := l.get(4 << 10); cap(*e) < 4<<10 {
		t.Errorf("get(4 KiB) = cap %d", cap(*e))
	}
}
