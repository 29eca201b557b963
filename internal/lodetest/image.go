package lodetest

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestImage is one platform's image for WriteLayout.
type TestImage struct {
	Platform string   // "os/arch[/variant]"
	Layers   [][]byte // uncompressed tars, base first (gzip-compressed in the layout)
	Cmd      []string
	Env      []string
	// LayerMediaType overrides the layers' media type (default OCI
	// tar+gzip), to make images lode must refuse.
	LayerMediaType types.MediaType
}

// Files returns a tar of regular files (name → content) and the
// directories their names imply, in the order given by names.
func Files(t testing.TB, names []string, content map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	dirs := map[string]bool{}
	for _, n := range names {
		for i := 0; i < len(n); i++ {
			if n[i] == '/' && !dirs[n[:i]] {
				dirs[n[:i]] = true
				tw.WriteHeader(&tar.Header{Name: n[:i] + "/", Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX})
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content[n])), Format: tar.FormatPAX}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, content[n])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// WriteLayout writes an OCI image layout at dir whose index names tag: one
// image (an OCI manifest), or an OCI image index of several, one per
// platform. Push it with Registry.PushImage(t, "oci:"+dir+":"+tag, …).
func WriteLayout(t testing.TB, dir, tag string, images ...TestImage) {
	t.Helper()
	var imgs []v1.Image
	for _, ti := range images {
		p, err := v1.ParsePlatform(ti.Platform)
		if err != nil {
			t.Fatal(err)
		}
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		mt := ti.LayerMediaType
		if mt == "" {
			mt = types.OCILayer
		}
		for _, l := range ti.Layers {
			l := l
			layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil },
				tarball.WithMediaType(mt))
			if err != nil {
				t.Fatal(err)
			}
			if img, err = mutate.AppendLayers(img, layer); err != nil {
				t.Fatal(err)
			}
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		cf.Config.Cmd, cf.Config.Env = ti.Cmd, ti.Env
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	ann := layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})
	if len(imgs) == 1 {
		if err := lp.AppendImage(imgs[0], ann); err != nil {
			t.Fatal(err)
		}
		return
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, img := range imgs {
		p, _ := v1.ParsePlatform(images[i].Platform)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	if err := lp.AppendIndex(idx, ann); err != nil {
		t.Fatal(err)
	}
}
