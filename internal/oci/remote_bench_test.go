package oci

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/lodetest"
)

// BenchmarkRemoteFlatten_4x2MiB_8MiBps flattens a 4-layer image (2 MiB of
// incompressible data per layer) from a registry behind a proxy that gives
// each blob response 50 ms of latency and 8 MiB/s, as registries backed
// by object stores do per connection; Jobs=1 downloads one layer at a time,
// Jobs=3 (the default) keeps three in flight ahead of the flattener.
func BenchmarkRemoteFlatten_4x2MiB_8MiBps(b *testing.B) {
	reg := lodetest.StartRegistry(b, lodetest.RegistryOptions{})
	dir := b.TempDir() + "/layout"
	layers := bigLayers(b, 4, 2<<20)
	lodetest.WriteLayout(b, dir, "t", lodetest.TestImage{Platform: "linux/amd64", Layers: layers})
	reg.PushImage(b, "oci:"+dir+":t", "bench:v1", "")
	proxy := newFaultProxy(b, reg)
	proxy.latency, proxy.rate = 50*time.Millisecond, 8<<20
	ref := "docker://" + proxy.host() + "/bench:v1"
	for _, jobs := range []int{1, 3} {
		b.Run(fmt.Sprintf("jobs=%d", jobs), func(b *testing.B) {
			ro := RemoteOptions{Insecure: []string{proxy.host()}, Jobs: jobs}
			var pulled int64
			for b.Loop() {
				im, err := OpenWith(b.Context(), ref, ro)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Flatten(b.Context(), im, io.Discard, DefaultFlattenOptions()); err != nil {
					b.Fatal(err)
				}
				pulled = im.Pulled()
				im.Close()
			}
			b.SetBytes(pulled)
		})
	}
}
