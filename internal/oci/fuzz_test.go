package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzFlatten feeds arbitrary bytes as a rootfs tar. Flatten must not panic; if it succeeds, its output
// must be a tar of clean relative names whose hard links point to entries written before them and whose
// relative symlinks stay inside the root.
func FuzzFlatten(f *testing.F) {
	f.Add(tarOf(f, te{name: "a/"}, te{name: "a/b", body: "b"}, te{name: "h", typ: tar.TypeLink, link: "a/b"}))
	f.Add(tarOf(f, te{name: "./"}, te{name: "s", typ: tar.TypeSymlink, link: "/etc"}, te{name: "a/.wh.x"}, te{name: "f", body: "1"}, te{name: "f", body: "2"}))
	f.Add(tarOf(f, te{name: "../../etc/passwd", body: "x"}))
	f.Add(gzipOf(f, tarOf(f, te{name: "g", body: "gz"})))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.tar")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		im, err := Open(ctx, "rootfs:"+p)
		if err != nil {
			t.Fatal(err)
		}
		o := DefaultFlattenOptions()
		o.MaxFileSize = 1 << 20
		o.TempDir = dir
		var out bytes.Buffer
		if _, err := Flatten(ctx, im, &out, o); err != nil {
			return
		}
		seen := map[string]bool{}
		tr := tar.NewReader(&out)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("output does not parse: %v", err)
			}
			if _, err := io.Copy(io.Discard, tr); err != nil {
				t.Fatalf("output content: %v", err)
			}
			if h.Name == "" || strings.HasPrefix(h.Name, "/") || path.Clean(h.Name) != h.Name || h.Name == ".." || strings.HasPrefix(h.Name, "../") {
				t.Fatalf("unsafe or unclean output name %q", h.Name)
			}
			if seen[h.Name] {
				t.Fatalf("%q written twice", h.Name)
			}
			switch h.Typeflag {
			case tar.TypeLink:
				if !seen[h.Linkname] {
					t.Fatalf("hard link %q -> %q written before its target", h.Name, h.Linkname)
				}
			case tar.TypeSymlink:
				if !strings.HasPrefix(h.Linkname, "/") {
					if c := path.Join(path.Dir(h.Name), h.Linkname); c == ".." || strings.HasPrefix(c, "../") {
						t.Fatalf("symlink %q -> %q escapes", h.Name, h.Linkname)
					}
				}
			case tar.TypeChar, tar.TypeBlock:
				t.Fatalf("device %q written with AllowDevices false", h.Name)
			}
			seen[h.Name] = true
		}
	})
}
