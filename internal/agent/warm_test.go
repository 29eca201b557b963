package agent

import (
	"bytes"
	"context"
	"runtime/debug"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/lode-dev/lode/internal/chunk"
)

// startWarm runs Warm for the test and waits until its reserve holds want
// buffers.
func startWarm(t testing.TB, bytes int64, size, want int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Warm(ctx, bytes, size) }()
	stop = func() { cancel(); <-done }
	deadline := time.Now().Add(10 * time.Second)
	for WarmBuffers() < want {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("warm reserve holds %d buffers after 10 s, want %d", WarmBuffers(), want)
		}
		time.Sleep(time.Millisecond)
	}
	return stop
}

func TestWarmReserve(t *testing.T) {
	quiet := warmQuiet
	warmQuiet = 50 * time.Millisecond
	t.Cleanup(func() { warmQuiet = quiet })
	const size = 64 << 10
	stop := startWarm(t, 4*size+size/2, size, 4) // 4 buffers: the bytes round down
	defer stop()
	if n := WarmBuffers(); n != 4 {
		t.Fatalf("reserve holds %d buffers, want 4", n)
	}
	// A second Warm while one runs does nothing.
	Warm(context.Background(), 100*size, size)
	if n := WarmBuffers(); n != 4 {
		t.Fatalf("after a second Warm the reserve holds %d buffers, want 4", n)
	}

	for _, tc := range []struct {
		name     string
		n        int
		fromWarm bool
	}{
		{"chunk of the reserve's size", size, true},
		{"smaller chunk (an image's last)", size / 2, false},
		{"larger chunk", 2 * size, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := WarmBuffers()
			b := newPlain(tc.n)
			if len(b) != 0 || cap(b) != tc.n {
				t.Fatalf("newPlain(%d): len %d cap %d", tc.n, len(b), cap(b))
			}
			if !bytes.Equal(b[:tc.n], make([]byte, tc.n)) {
				t.Fatal("a new plaintext buffer is not all zeros")
			}
			if got := before - WarmBuffers(); (got == 1) != tc.fromWarm {
				t.Fatalf("reserve went from %d to %d buffers; from the reserve: want %v", before, WarmBuffers(), tc.fromWarm)
			}
		})
	}
	// Drain it: newPlain still works, with new buffers.
	for WarmBuffers() > 0 {
		newPlain(size)
	}
	if b := newPlain(size); cap(b) != size {
		t.Fatalf("newPlain with the reserve empty: cap %d", cap(b))
	}
	// Once quiet, Warm fills it again.
	deadline := time.Now().Add(10 * time.Second)
	for WarmBuffers() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("reserve not refilled after the quiet period: %d buffers", WarmBuffers())
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if n := WarmBuffers(); n != 0 {
		t.Fatalf("after Warm returned WarmBuffers = %d, want 0", n)
	}
	if b := takeWarm(size); b != nil {
		t.Fatal("a buffer came from a stopped reserve")
	}
}

func TestWarmRefusesTooLittle(t *testing.T) {
	for _, tc := range []struct {
		bytes int64
		size  int
	}{{0, 1 << 10}, {1 << 10, 0}, {100, 1 << 10}, {-1, 0}} {
		done := make(chan struct{})
		go func() { defer close(done); Warm(context.Background(), tc.bytes, tc.size) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Warm(%d bytes, size %d) did not return at once", tc.bytes, tc.size)
		}
		if WarmBuffers() != 0 {
			t.Fatalf("Warm(%d bytes, size %d) left a reserve", tc.bytes, tc.size)
		}
	}
}

// BenchmarkOpenZstdColdMemory is what a fresh agent's cold start does: it
// opens chunks into buffers that stay alive (the memory cache keeps them),
// so every buffer is memory the process has not written before. "new"
// allocates them as the read path does without a reserve; "warm" takes
// them from a reserve Warm wrote beforehand (outside the timer). Each
// round opens 64 chunks and then returns the memory to the OS, so the next
// round's new buffers are new memory again.
func BenchmarkOpenZstdColdMemory(b *testing.B) {
	const size, round = 512 << 10, 64
	plain := textLike(size)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	s, _ := chunk.NewSealer(bytes.Repeat([]byte{7}, chunk.SecretSize))
	ref, ct, err := s.Seal(enc.EncodeAll(plain, nil), []byte("salt"), nil)
	if err != nil {
		b.Fatal(err)
	}
	c := &call{ref: ref, zstd: true, size: size}
	for _, warm := range []bool{false, true} {
		name := "new"
		if warm {
			name = "warm"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			kept := make([][]byte, 0, round)
			var stop func()
			next := func() {
				b.StopTimer()
				if stop != nil {
					stop()
					stop = nil
				}
				kept = kept[:0]
				debug.FreeOSMemory()
				if warm {
					stop = startWarm(b, round*size, size, round)
				}
				b.StartTimer()
			}
			next()
			for i := 0; b.Loop(); i++ {
				if i > 0 && i%round == 0 {
					next()
				}
				p, err := openChunk(c, ct, false)
				if err != nil || len(p) != size {
					b.Fatalf("openChunk = %d bytes, %v", len(p), err)
				}
				kept = append(kept, p)
			}
			b.StopTimer()
			if stop != nil {
				stop()
			}
		})
	}
}

func TestWarmFetchBuffers(t *testing.T) {
	ti := stdImage(t)
	a, err := New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(ti.st, testRoot)}, MaxConcurrentFetches: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for len(frames) > 0 { // other tests' leftovers
		<-frames
	}
	const size = 64 << 10
	a.WarmFetchBuffers(size)
	want := size + chunk.Overhead + zstdSlack
	for _, l := range []struct {
		name string
		l    freeList
		n    int
	}{{"ciphertext buffers", a.bufs, min(4, warmBuffersKept)}, {"zstd frames", frames, min(cap(frames), warmBuffersKept)}} {
		if len(l.l) != l.n {
			t.Errorf("%s: %d written ahead, want %d", l.name, len(l.l), l.n)
		}
		for len(l.l) > 0 {
			bp := <-l.l
			if len(*bp) != 0 || cap(*bp) != want {
				t.Errorf("%s: buffer len %d cap %d, want 0 and %d", l.name, len(*bp), cap(*bp), want)
			}
		}
	}
}
