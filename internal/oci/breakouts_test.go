package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// setTypeflag rewrites the typeflag of the tar header at off and fixes its checksum.
func setTypeflag(b []byte, off int, typ byte) []byte {
	b = bytes.Clone(b)
	h := b[off : off+512]
	h[156] = typ
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// paxBomb is a tar whose second entry has a 2 MiB PAX header (archive/tar's writer refuses to make one).
func paxBomb(t testing.TB) []byte {
	rec := "user.big=" + strings.Repeat("x", 2<<20) + "\n"
	rec = fmt.Sprintf("%d SCHILY.xattr.%s", len(rec)+len(" SCHILY.xattr.")+8, rec)
	b := tarOf(t, te{name: "first", body: "1"}, te{name: "PaxHeaders/x", body: rec}, te{name: "x", body: "x"})
	return setTypeflag(b, 1024, tar.TypeXHeader)
}

func gzipOf(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// TestBreakouts feeds hostile images to Flatten; each must fail with its sentinel and name the entry.
func TestBreakouts(t *testing.T) {
	random := make([]byte, 64<<10)
	rand.Read(random)
	corruptGzip := gzipOf(t, tarOf(t, te{name: "big", body: string(random)}))
	corruptGzip[len(corruptGzip)/2] ^= 0xff
	typeV := setTypeflag(tarOf(t, te{name: "ok", body: "x"}, te{name: "volhdr", body: ""}), 1024, 'V')
	typeCont := setTypeflag(tarOf(t, te{name: "cont", body: ""}), 0, tar.TypeCont)

	tests := []struct {
		name   string
		tar    []byte
		opts   func(*FlattenOptions)
		want   error
		naming string // must appear in the error message
	}{
		{"traversal", tarOf(t, te{name: "../etc/passwd", body: "x"}), nil, ErrUnsafeEntry, `"../etc/passwd"`},
		{"traversal after clean", tarOf(t, te{name: "a/", mode: 0o755}, te{name: "a/../../x", body: "x"}), nil, ErrUnsafeEntry, `"a/../../x"`},
		{"absolute path", tarOf(t, te{name: "/etc/x", body: "x"}), nil, ErrUnsafeEntry, `"/etc/x"`},
		{"escaping relative symlink", tarOf(t, te{name: "a/l", typ: tar.TypeSymlink, link: "../../etc/shadow"}), nil, ErrUnsafeEntry, `"a/l"`},
		{"empty symlink target", tarOf(t, te{name: "l", typ: tar.TypeSymlink}), nil, ErrUnsafeEntry, `"l"`},
		{"hard link to missing target", tarOf(t, te{name: "h", typ: tar.TypeLink, link: "nothere"}), nil, ErrUnsafeEntry, `"nothere"`},
		{"hard link outside root", tarOf(t, te{name: "h", typ: tar.TypeLink, link: "../etc/passwd"}), nil, ErrUnsafeEntry, `"h"`},
		{"hard link absolute", tarOf(t, te{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}), nil, ErrUnsafeEntry, `"h"`},
		{"hard link to itself", tarOf(t, te{name: "h", body: "x"}, te{name: "h", typ: tar.TypeLink, link: "h"}), nil, ErrUnsafeEntry, `"h"`},
		{"hard link to directory", tarOf(t, te{name: "d/"}, te{name: "h", typ: tar.TypeLink, link: "d"}), nil, ErrUnsafeEntry, `"h"`},
		{"hard link through symlink", tarOf(t, te{name: "s", typ: tar.TypeSymlink, link: "/etc"}, te{name: "h", typ: tar.TypeLink, link: "s/passwd"}), nil, ErrUnsafeEntry, `"s/passwd"`},
		{"write through a symlink parent", tarOf(t, te{name: "s", typ: tar.TypeSymlink, link: "/etc"}, te{name: "s/passwd", body: "x"}), nil, ErrUnsupported, `"s/passwd"`},
		{"device node outside /dev", tarOf(t, te{name: "sda", typ: tar.TypeBlock}), nil, ErrUnsafeEntry, "--allow-devices"},
		{"char device outside /dev", tarOf(t, te{name: "a/dev/mem", typ: tar.TypeChar}), nil, ErrUnsafeEntry, `"a/dev/mem"`},
		{"setuid when disallowed", tarOf(t, te{name: "bin/su", body: "x", mode: 0o4755}), func(o *FlattenOptions) { o.AllowSetuid = false }, ErrUnsafeEntry, `"bin/su"`},
		{"setgid when disallowed", tarOf(t, te{name: "bin/x", body: "x", mode: 0o2755}), func(o *FlattenOptions) { o.AllowSetuid = false }, ErrUnsafeEntry, `"bin/x"`},
		{"too many entries", tarOf(t, te{name: "a"}, te{name: "b"}, te{name: "c"}, te{name: "d"}), func(o *FlattenOptions) { o.MaxEntries = 3 }, ErrUnsafeEntry, `"d"`},
		{"too deep", tarOf(t, te{name: "a/b/c/d", body: "x"}), func(o *FlattenOptions) { o.MaxDepth = 3 }, ErrUnsafeEntry, `"a/b/c/d"`},
		{"name component too long", tarOf(t, te{name: strings.Repeat("n", 256), body: "x"}), nil, ErrUnsafeEntry, strings.Repeat("n", 256)},
		{"file too large", tarOf(t, te{name: "big", body: "0123456789"}), func(o *FlattenOptions) { o.MaxFileSize = 5 }, ErrUnsafeEntry, `"big"`},
		{"huge PAX header", tarOf(t, te{name: "x", xattrs: map[string]string{"user.big": strings.Repeat("x", 8192)}}), func(o *FlattenOptions) { o.MaxPAXBytes = 4096 }, ErrUnsafeEntry, `"x"`},
		{"PAX header beyond archive/tar's cap", paxBomb(t), nil, ErrUnsafeEntry, `"first"`},
		{"whiteout of dot-dot", tarOf(t, te{name: "a/.wh..."}), nil, ErrUnsafeEntry, `"a/.wh..."`},
		{"root as a file", tarOf(t, te{name: ".", typ: tar.TypeReg}), nil, ErrUnsafeEntry, `"."`},
		{"truncated tar", tarOf(t, te{name: "a", body: strings.Repeat("a", 2000)})[:512+700], nil, ErrCorrupt, `"a"`},
		{"corrupt gzip", corruptGzip, nil, ErrCorrupt, `"big"`},
		{"garbage", bytes.Repeat([]byte("not a tar "), 100), nil, ErrCorrupt, "layer 0"},
		{"unsupported type V", typeV, nil, ErrUnsupported, `"volhdr"`},
		{"unsupported type cont", typeCont, nil, ErrUnsupported, `"cont"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultFlattenOptions()
			if tc.opts != nil {
				tc.opts(&o)
			}
			out, _, err := flatten(t, "rootfs:"+writeFile(t, tc.tar), o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Flatten = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.naming) {
				t.Errorf("Flatten error %q does not name %s", err, tc.naming)
			}
			var ee *EntryError
			if !errors.As(err, &ee) {
				t.Errorf("Flatten error %v is not an *EntryError", err)
			}
			if len(out) != 0 {
				t.Errorf("Flatten wrote %d bytes for a refused image", len(out))
			}
		})
	}
}

// TestWrongLayerDigest replaces a layer blob of an OCI layout with another valid gzip tar.
func TestWrongLayerDigest(t *testing.T) {
	dir := writeLayout(t, v1.Config{}, tarOf(t, te{name: "a", body: "a"}), tarOf(t, te{name: "b", body: "b"}))
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(t.Context(), "oci:"+dir+":test")
	if err != nil {
		t.Fatal(err)
	}
	d := im.layers[1].digest
	h, _ := v1.NewHash(d)
	blob := filepath.Join(string(p), "blobs", h.Algorithm, h.Hex)
	if err := os.WriteFile(blob, gzipOf(t, tarOf(t, te{name: "b", body: "evil"})), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = flatten(t, "oci:"+dir+":test", DefaultFlattenOptions())
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), d) {
		t.Errorf("Flatten(tampered layer) = %v, want ErrCorrupt naming %s", err, d)
	}
	var ee *EntryError
	if !errors.As(err, &ee) || ee.Layer != 1 {
		t.Errorf("Flatten(tampered layer) = %#v, want an *EntryError for layer 1", err)
	}
}

// TestTamperedManifest changes the config blob: Open refuses it.
func TestTamperedConfig(t *testing.T) {
	dir := writeLayout(t, v1.Config{Cmd: []string{"/bin/true"}}, tarOf(t, te{name: "a", body: "a"}))
	p, _ := layout.FromPath(dir)
	ii, _ := p.ImageIndex()
	m, _ := ii.IndexManifest()
	img, _ := ii.Image(m.Manifests[0].Digest)
	cn, _ := img.ConfigName()
	blob := filepath.Join(dir, "blobs", cn.Algorithm, cn.Hex)
	b, _ := os.ReadFile(blob)
	b = bytes.Replace(b, []byte("/bin/true"), []byte("/bin/evil"), 1)
	os.WriteFile(blob, b, 0o644)
	if _, err := Open(t.Context(), "oci:"+dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), cn.String()) {
		t.Errorf("Open(tampered config) = %v, want ErrCorrupt naming %s", err, cn)
	}
}
