package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestFlattenOnce checks which single-layer images FlattenOnce writes in one read (the same bytes as
// Flatten) and which it hands to the two-pass flatten. The flatten helper runs the same comparison for
// every other test of this package.
func TestFlattenOnce(t *testing.T) {
	tests := []struct {
		name    string
		entries []te
		once    bool // FlattenOnce writes it; else ErrTwoPasses
		cut     int  // keep only this many bytes of the tar
	}{
		{"tree in order", []te{{name: "./"}, {name: "a/"}, {name: "a/b", body: "b"}, {name: "a/l", typ: tar.TypeSymlink, link: "b"}, {name: "h", typ: tar.TypeLink, link: "a/b"}}, true, 0},
		{"implied parent", []te{{name: "a/b/c", body: "c"}, {name: "d", body: "d"}}, true, 0},
		{"base-layer whiteout and opaque marker", []te{{name: "a/"}, {name: "a/.wh.x", mode: 0o600}, {name: "a/.wh..wh..opq"}, {name: "a/y", body: "y"}}, true, 0},
		{"link to a link", []te{{name: "f", body: "f"}, {name: "g", typ: tar.TypeLink, link: "f"}, {name: "h", typ: tar.TypeLink, link: "g"}}, true, 0},
		{"root declared late", []te{{name: "a", body: "a"}, {name: "./"}}, true, 0},
		{"file replaced", []te{{name: "f", body: "1"}, {name: "f", body: "2"}}, false, 0},
		{"directory declared twice", []te{{name: "d/"}, {name: "d/", mode: 0o700}}, false, 0},
		{"directory declared after its child", []te{{name: "d/x", body: "x"}, {name: "d/"}}, false, 0},
		{"root declared twice", []te{{name: "./"}, {name: "./", mode: 0o700}}, false, 0},
		{"link's target replaced", []te{{name: "f", body: "1"}, {name: "h", typ: tar.TypeLink, link: "f"}, {name: "f", body: "2"}}, false, 0},
		{"link before its target", []te{{name: "h", typ: tar.TypeLink, link: "f"}, {name: "f", body: "1"}}, false, 0},
		{"unsafe name", []te{{name: "../x", body: "x"}}, false, 0},
		{"truncated", []te{{name: "a", body: "a"}, {name: "f", body: string(make([]byte, 3000))}}, false, 2048},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tarOf(t, tc.entries...)
			if tc.cut > 0 {
				b = b[:tc.cut]
			}
			src := "rootfs:" + writeFile(t, b)
			want, wantStats, wantErr := flatten(t, src, DefaultFlattenOptions()) // also runs checkOnce
			im, err := Open(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			var out bytes.Buffer
			st, err := FlattenOnce(context.Background(), im, &out, DefaultFlattenOptions())
			if got := err == nil; got != tc.once {
				t.Fatalf("FlattenOnce = %v, want one pass %v (Flatten: %v)", err, tc.once, wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrTwoPasses) {
					t.Fatalf("FlattenOnce = %v, want ErrTwoPasses", err)
				}
				return
			}
			if !bytes.Equal(out.Bytes(), want) || st != wantStats {
				t.Fatalf("FlattenOnce wrote %v %+v, Flatten %v %+v", listTar(t, out.Bytes()), st, listTar(t, want), wantStats)
			}
			if im.Digest() == "" {
				t.Fatal("the rootfs digest was not learned")
			}
		})
	}
}

// TestFlattenOnceLayers: more than one layer always takes two passes.
func TestFlattenOnceLayers(t *testing.T) {
	dir := writeLayout(t, v1.Config{}, tarOf(t, te{name: "a", body: "a"}), tarOf(t, te{name: "b", body: "b"}))
	im, err := Open(context.Background(), "oci:"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	var out bytes.Buffer
	if _, err := FlattenOnce(context.Background(), im, &out, DefaultFlattenOptions()); !errors.Is(err, ErrTwoPasses) || out.Len() != 0 {
		t.Fatalf("FlattenOnce of two layers = %v with %d bytes written, want ErrTwoPasses and none", err, out.Len())
	}
}
