package oci

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
)

func TestSplitPathTag(t *testing.T) {
	dir := t.TempDir()
	colon := filepath.Join(dir, "a:b")
	plain := filepath.Join(dir, "img.tar")
	for _, p := range []string{colon, plain} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ in, path, tag string }{
		{colon, colon, ""},                         // the whole string exists: no tag
		{colon + ":v1", colon, "v1"},               // a path with ':' and a tag
		{plain + ":lode/x:v2", plain, "lode/x:v2"}, // a docker reference with ':'
		{plain, plain, ""},
		{filepath.Join(dir, "missing:v1"), filepath.Join(dir, "missing:v1"), ""},
	}
	for _, tc := range tests {
		p, tag := splitPathTag(tc.in)
		if p != tc.path || tag != tc.tag {
			t.Errorf("splitPathTag(%q) = %q, %q; want %q, %q", tc.in, p, tag, tc.path, tc.tag)
		}
	}
}

func TestOpenLayoutSelection(t *testing.T) {
	dir := writeLayout(t, v1.Config{Entrypoint: []string{"/e"}, Cmd: []string{"c"}}, tarOf(t, te{name: "a", body: "a"}))
	ctx := context.Background()
	im, err := Open(ctx, "oci:"+dir+":test")
	if err != nil {
		t.Fatal(err)
	}
	if got := im.Config(); !cmp.Equal(got.Entrypoint, []string{"/e"}) || !cmp.Equal(got.Cmd, []string{"c"}) {
		t.Errorf("Config = %+v", got)
	}
	if im.String() != "oci:"+dir+":test" || im.Layers() != 1 || !strings.HasPrefix(im.Digest(), "sha256:") {
		t.Errorf("String, Layers, Digest = %q, %d, %q", im.String(), im.Layers(), im.Digest())
	}
	noTag, err := Open(ctx, "oci:"+dir)
	if err != nil || noTag.Digest() != im.Digest() {
		t.Errorf("Open(no tag) = %v, %v; want digest %s", noTag, err, im.Digest())
	}
	if _, err := Open(ctx, "oci:"+dir+":nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Open(unknown tag) = %v, want an error naming the tag", err)
	}
	if _, err := Open(ctx, "registry:foo"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Open(registry:foo) = %v, want ErrUnsupported", err)
	}
	if _, err := Open(ctx, "oci:"+filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing layout) = %v, want ErrNotExist", err)
	}
}

func TestRootfsCompression(t *testing.T) {
	raw := tarOf(t, te{name: "etc/"}, te{name: "etc/os-release", body: "ID=test\n"})
	var zs bytes.Buffer
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw)
	zw.Close()
	want := []string{`D etc 755`, `F etc/os-release 644 "ID=test\n"`}
	for name, b := range map[string][]byte{"plain": raw, "gzip": gzipOf(t, raw), "zstd": zs.Bytes()} {
		t.Run(name, func(t *testing.T) {
			out, _, err := flatten(t, "rootfs:"+writeFile(t, b), DefaultFlattenOptions())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, listTar(t, out)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	im, err := Open(context.Background(), "rootfs:"+writeFile(t, raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Flatten(context.Background(), im, io.Discard, DefaultFlattenOptions()); err != nil {
		t.Fatal(err)
	}
	if im.Digest() != sha256Digest(raw) || im.Layers() != 1 || !cmp.Equal(im.Config(), Config{}) {
		t.Errorf("rootfs Digest, Layers, Config = %q, %d, %+v", im.Digest(), im.Layers(), im.Config())
	}
}
