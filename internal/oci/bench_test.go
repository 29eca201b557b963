package oci

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// benchLayers makes two layers of ~32 MiB each: 512 files of 64 KiB of random-ish data in each, the upper
// layer replacing a quarter of the base's files and deleting another quarter.
func benchLayers(b *testing.B) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	body := func() string {
		p := make([]byte, 64<<10)
		for i := range p {
			p[i] = byte(rng.Uint32() >> 27) // compressible, like real files
		}
		return string(p)
	}
	var base, upper []te
	base = append(base, te{name: "d/"})
	for i := range 512 {
		base = append(base, te{name: fmt.Sprintf("d/f%03d", i), body: body()})
	}
	upper = append(upper, te{name: "d/"})
	for i := range 512 {
		switch i % 4 {
		case 0:
			upper = append(upper, te{name: fmt.Sprintf("d/f%03d", i), body: body()})
		case 1:
			upper = append(upper, te{name: fmt.Sprintf("d/.wh.f%03d", i)})
		default:
			upper = append(upper, te{name: fmt.Sprintf("d/g%03d", i), body: body()})
		}
	}
	return [][]byte{tarOf(b, base...), tarOf(b, upper...)}
}

func BenchmarkFlatten(b *testing.B) {
	layers := benchLayers(b)
	dir := writeLayout(b, v1.Config{}, layers...)
	im, err := Open(context.Background(), "oci:"+dir)
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, l := range layers {
		total += int64(len(l))
	}
	var out countWriter
	st, err := Flatten(context.Background(), im, &out, DefaultFlattenOptions())
	if err != nil {
		b.Fatal(err)
	}
	if st.Files != 640 { // 256 base files survive, 128 replaced, 256 added
		b.Fatalf("Files = %d, want 640", st.Files)
	}
	b.SetBytes(total)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Flatten(context.Background(), im, io.Discard, DefaultFlattenOptions()); err != nil {
			b.Fatal(err)
		}
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// BenchmarkFlattenRootfs flattens one 32 MiB rootfs tar (the base layer of benchLayers) in two passes
// (Flatten) and in one (FlattenOnce, what lode build does first for a single-layer image).
func BenchmarkFlattenRootfs(b *testing.B) {
	base := benchLayers(b)[0]
	src := "rootfs:" + writeFile(b, base)
	for _, bc := range []struct {
		name    string
		flatten func(context.Context, *Image, io.Writer, FlattenOptions) (FlattenStats, error)
	}{{"two-pass", Flatten}, {"once", FlattenOnce}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(base)))
			b.ReportAllocs()
			for b.Loop() {
				im, err := Open(context.Background(), src)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := bc.flatten(context.Background(), im, io.Discard, DefaultFlattenOptions()); err != nil {
					b.Fatal(err)
				}
				im.Close()
			}
		})
	}
}
