package manifest

import (
	"context"
	"testing"
)

// benchManifest is a 10 GiB image: 20,480 chunks of 512 KiB, one in eight a
// hole, with a typical config and a few hundred hints.
func benchManifest() *Manifest {
	hints := make([]uint32, 300)
	for i := range hints {
		hints[i] = uint32(i * 67)
	}
	return makeManifest(spec{chunks: 20480, hole: func(i int) bool { return i%8 == 7 }, hints: hints, config: Config{
		Entrypoint: []string{"/docker-entrypoint.sh"},
		Cmd:        []string{"python3", "-m", "http.server"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PYTHON_VERSION=3.12.4"},
		WorkingDir: "/app",
		User:       "1000:1000",
	}})
}

func BenchmarkSeal_20480(b *testing.B) {
	ctx := context.Background()
	kr := testKeyring(b, "bench", "acme")
	m := benchManifest()
	sealed, err := Seal(ctx, m, "acme", kr)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(sealed)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Seal(ctx, m, "acme", kr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen_20480(b *testing.B) {
	ctx := context.Background()
	kr := testKeyring(b, "bench", "acme")
	sealed, err := Seal(ctx, benchManifest(), "acme", kr)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(sealed)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Open(ctx, sealed, "acme", kr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadPublic_20480(b *testing.B) {
	kr := testKeyring(b, "bench", "acme")
	sealed, err := Seal(context.Background(), benchManifest(), "acme", kr)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(sealed)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := ReadPublic(sealed); err != nil {
			b.Fatal(err)
		}
	}
}
