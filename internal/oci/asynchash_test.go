package oci

import (
	"bytes"
	"crypto/sha256"
	"math/rand"
	"testing"
)

func TestAsyncHash(t *testing.T) {
	data := make([]byte, 5<<20+123)
	rand.New(rand.NewSource(1)).Read(data)
	tests := []struct {
		name   string
		writes []int // sizes of the writes, in order
	}{
		{"none", nil},
		{"one byte", []int{1}},
		{"one large write", []int{5<<20 + 23}},
		{"buffer-sized", []int{asyncHashBufLen, asyncHashBufLen, asyncHashBufLen, asyncHashBufLen}},
		{"many small", func() []int {
			var w []int
			for i := 0; i < 4000; i++ {
				w = append(w, 1+i%700)
			}
			return w
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAsyncHash(sha256.New())
			off := 0
			for _, n := range tt.writes {
				if k, err := a.Write(data[off : off+n]); k != n || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", n, k, err)
				}
				off += n
			}
			want := sha256.Sum256(data[:off])
			if got := a.Sum(nil); !bytes.Equal(got, want[:]) {
				t.Fatalf("Sum after %d bytes = %x, want %x", off, got, want)
			}
			// Writes after Sum are hashed too, synchronously.
			a.Write(data[off : off+100])
			want = sha256.Sum256(data[:off+100])
			if got := a.Sum(nil); !bytes.Equal(got, want[:]) {
				t.Fatalf("Sum after a further write = %x, want %x", got, want)
			}
			a.stop() // idempotent
		})
	}
}

func BenchmarkAsyncHash(b *testing.B) {
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)) * 64)
	for i := 0; i < b.N; i++ {
		a := newAsyncHash(sha256.New())
		for range 64 {
			a.Write(data)
		}
		a.Sum(nil)
	}
}
