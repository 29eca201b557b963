package storetest

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/lode-dev/lode/internal/store"
)

// Bench measures Put and Get of ChunkSize objects, one at a time and from
// 16 goroutines. newStore is called once per sub-benchmark.
func Bench(b *testing.B, newStore func(b *testing.B) store.Store) {
	data := Data(99, ChunkSize)
	b.Run("Put512K", func(b *testing.B) {
		s := newStore(b)
		b.SetBytes(ChunkSize)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := s.Put(b.Context(), benchKey("put", i), data); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("Get512K", func(b *testing.B) {
		s := newStore(b)
		const n = 32
		for i := range n {
			if err := s.Put(b.Context(), benchKey("get", i), data); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(ChunkSize)
		b.ReportAllocs()
		buf := make([]byte, 0, ChunkSize)
		i := 0
		for b.Loop() {
			var err error
			if buf, err = s.Get(b.Context(), benchKey("get", i%n), buf); err != nil || len(buf) != ChunkSize {
				b.Fatalf("Get: %d bytes, %v", len(buf), err)
			}
			i++
		}
	})
	b.Run("PutParallel16", func(b *testing.B) {
		s := newStore(b)
		b.SetBytes(ChunkSize)
		b.ReportAllocs()
		b.SetParallelism(max(1, 16/parallelDivisor()))
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.Put(b.Context(), benchKey("pput", int(next.Add(1))), data); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("GetParallel16", func(b *testing.B) {
		s := newStore(b)
		const n = 32
		for i := range n {
			if err := s.Put(b.Context(), benchKey("pget", i), data); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(ChunkSize)
		b.ReportAllocs()
		b.SetParallelism(max(1, 16/parallelDivisor()))
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 0, ChunkSize)
			for pb.Next() {
				var err error
				if buf, err = s.Get(b.Context(), benchKey("pget", int(next.Add(1))%n), buf); err != nil || len(buf) != ChunkSize {
					b.Errorf("Get: %d bytes, %v", len(buf), err)
					return
				}
			}
		})
	})
}

func benchKey(kind string, i int) string {
	return fmt.Sprintf("roots/bench/chunks/%s%060d", kind, i)
}

// parallelDivisor is GOMAXPROCS: RunParallel starts parallelism×GOMAXPROCS
// goroutines.
func parallelDivisor() int { return runtime.GOMAXPROCS(0) }
