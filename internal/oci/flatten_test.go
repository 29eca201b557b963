package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
)

func TestFlattenLayers(t *testing.T) {
	wh := func(name string) te { return te{name: name, mode: 0o600} }
	tests := []struct {
		name   string
		layers [][]te
		opts   func(*FlattenOptions)
		want   []string
	}{{
		name: "layer order, not sorted",
		layers: [][]te{
			{{name: "z/"}, {name: "z/f", body: "1"}, {name: "b", body: "b"}},
			{{name: "c", body: "c"}, {name: "z/a", body: "2"}},
		},
		want: []string{`D z 755`, `F z/f 644 "1"`, `F b 644 "b"`, `F c 644 "c"`, `F z/a 644 "2"`},
	}, {
		name: "whiteout of a file",
		layers: [][]te{
			{{name: "a/"}, {name: "a/x", body: "x"}, {name: "a/y", body: "y"}},
			{wh("a/.wh.x")},
		},
		want: []string{`D a 755`, `F a/y 644 "y"`},
	}, {
		name: "whiteout of a directory removes its subtree",
		layers: [][]te{
			{{name: "d/"}, {name: "d/x", body: "x"}, {name: "d/sub/"}, {name: "d/sub/y", body: "y"}, {name: "e", body: "e"}},
			{wh(".wh.d")},
		},
		want: []string{`F e 644 "e"`},
	}, {
		name: "opaque directory hides lower children, keeps first position and takes top attributes",
		layers: [][]te{
			{{name: "d/"}, {name: "d/x", body: "x"}, {name: "d/y", body: "y"}, {name: "e", body: "e"}},
			{{name: "d/", mode: 0o700}, {name: "d/z", body: "z"}, wh("d/.wh..wh..opq")},
		},
		want: []string{`D d 700`, `F e 644 "e"`, `F d/z 644 "z"`},
	}, {
		name: "opaque root",
		layers: [][]te{
			{{name: "a", body: "a"}, {name: "d/"}},
			{wh(".wh..wh..opq"), {name: "b", body: "b"}},
		},
		want: []string{`F b 644 "b"`},
	}, {
		name: "directory redeclared keeps first position and topmost attributes",
		layers: [][]te{
			{{name: "d/"}, {name: "d/x", body: "x"}},
			{{name: "d/", mode: 0o750}},
			{{name: "d/", mode: 0o711}, {name: "d/y", body: "y"}},
		},
		want: []string{`D d 711`, `F d/x 644 "x"`, `F d/y 644 "y"`},
	}, {
		name: "file replaced above moves to the upper position",
		layers: [][]te{
			{{name: "f", body: "old"}, {name: "g", body: "g"}},
			{{name: "f", body: "new"}},
		},
		want: []string{`F g 644 "g"`, `F f 644 "new"`},
	}, {
		name: "directory replaced by a file",
		layers: [][]te{
			{{name: "d/"}, {name: "d/x", body: "x"}},
			{{name: "d", body: "file"}},
		},
		want: []string{`F d 644 "file"`},
	}, {
		name: "file replaced by a directory",
		layers: [][]te{
			{{name: "d", body: "file"}},
			{{name: "d/"}, {name: "d/x", body: "x"}},
		},
		want: []string{`D d 755`, `F d/x 644 "x"`},
	}, {
		name: "whiteout and re-add in one layer, whiteout listed last",
		layers: [][]te{
			{{name: "d/"}, {name: "d/x", body: "x"}},
			{{name: "d/", mode: 0o700}, {name: "d/y", body: "y"}, wh(".wh.d")},
		},
		want: []string{`D d 700`, `F d/y 644 "y"`},
	}, {
		name: "whiteout of a missing path is a no-op",
		layers: [][]te{
			{{name: "a", body: "a"}},
			{wh(".wh.nothere"), wh("no/dir/.wh.x")},
		},
		want: []string{`F a 644 "a"`},
	}, {
		name: "hard link kept",
		layers: [][]te{
			{{name: "f", body: "data"}, {name: "h", typ: tar.TypeLink, link: "f"}},
		},
		want: []string{`F f 644 "data"`, `H h => f`},
	}, {
		name: "hard link target deleted above: first link carries the content",
		layers: [][]te{
			{{name: "f", body: "data", mode: 0o4755}, {name: "h1", typ: tar.TypeLink, link: "./f"}, {name: "h2", typ: tar.TypeLink, link: "f"}},
			{wh(".wh.f")},
		},
		want: []string{`F h1 4755 "data"`, `H h2 => h1`},
	}, {
		name: "hard link target replaced above keeps the old content",
		layers: [][]te{
			{{name: "f", body: "old"}, {name: "h", typ: tar.TypeLink, link: "f"}},
			{{name: "f", body: "new"}},
		},
		want: []string{`F h 644 "old"`, `F f 644 "new"`},
	}, {
		name: "hard link in an upper layer to a lower file",
		layers: [][]te{
			{{name: "f", body: "data"}},
			{{name: "h", typ: tar.TypeLink, link: "f"}},
		},
		want: []string{`F f 644 "data"`, `H h => f`},
	}, {
		name: "hard link in layer 1 to a file deleted in layer 2",
		layers: [][]te{
			{{name: "f", body: "data"}},
			{{name: "h", typ: tar.TypeLink, link: "f"}},
			{wh(".wh.f")},
		},
		want: []string{`F h 644 "data"`},
	}, {
		name: "chained hard links rewritten to the surviving holder",
		layers: [][]te{
			{{name: "f", body: "data"}, {name: "h1", typ: tar.TypeLink, link: "f"}, {name: "h2", typ: tar.TypeLink, link: "h1"}},
			{wh(".wh.f")},
		},
		want: []string{`F h1 644 "data"`, `H h2 => h1`},
	}, {
		name: "hard link to a symlink whose original is deleted",
		layers: [][]te{
			{{name: "s", typ: tar.TypeSymlink, link: "/etc"}, {name: "h", typ: tar.TypeLink, link: "s"}},
			{wh(".wh.s")},
		},
		want: []string{`S h -> /etc`},
	}, {
		name: "hard link whose own path is deleted, target kept",
		layers: [][]te{
			{{name: "f", body: "data"}, {name: "h", typ: tar.TypeLink, link: "f"}},
			{wh(".wh.h")},
		},
		want: []string{`F f 644 "data"`},
	}, {
		name: "implicit parents are not emitted",
		layers: [][]te{
			{{name: "a/b/c", body: "c"}},
		},
		want: []string{`F a/b/c 644 "c"`},
	}, {
		name: "implicit directory declared later is emitted at its first position",
		layers: [][]te{
			{{name: "a/b", body: "b"}},
			{{name: "a/", mode: 0o700}, {name: "a/c", body: "c"}},
		},
		want: []string{`D a 700`, `F a/b 644 "b"`, `F a/c 644 "c"`},
	}, {
		name: "root directory kept as ., names normalised",
		layers: [][]te{
			{{name: "./", mode: 0o755}, {name: "./a/"}, {name: "./a//b", body: "b"}},
			{{name: ".", typ: tar.TypeDir, mode: 0o700}},
		},
		want: []string{`D . 700`, `D a 755`, `F a/b 644 "b"`},
	}, {
		name: "duplicate in one layer: the later wins",
		layers: [][]te{
			{{name: "f", body: "1"}, {name: "g", body: "g"}, {name: "f", body: "2"}},
		},
		want: []string{`F g 644 "g"`, `F f 644 "2"`},
	}, {
		name: "symlinks: absolute kept, relative inside kept",
		layers: [][]te{
			{{name: "etc/"}, {name: "etc/alt", typ: tar.TypeSymlink, link: "/usr/bin/vim"}, {name: "etc/rel", typ: tar.TypeSymlink, link: "../usr/x"}},
		},
		want: []string{`D etc 755`, `S etc/alt -> /usr/bin/vim`, `S etc/rel -> ../usr/x`},
	}, {
		name: "aufs metadata and PAX global headers skipped",
		layers: [][]te{
			{{name: "pax_global_header", typ: tar.TypeXGlobalHeader}, {name: ".wh..wh.plnk/", typ: tar.TypeDir}, {name: "a", body: "a"}},
		},
		want: []string{`F a 644 "a"`},
	}, {
		name: "devices and fifos when allowed, setgid directory with setuid refused",
		layers: [][]te{
			{{name: "dev/", mode: 0o2755}, {name: "dev/null", typ: tar.TypeChar, mode: 0o666}, {name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600}},
		},
		opts: func(o *FlattenOptions) { o.AllowDevices, o.AllowSetuid = true, false },
		want: []string{`D dev 2755`, `c dev/null 0,0`, `P dev/fifo`},
	}, {
		name: "xattrs kept",
		layers: [][]te{
			{{name: "f", body: "x", xattrs: map[string]string{"user.a": "1", "security.capability": "\x01\x00bin"}}},
		},
		want: []string{`F f 644 "x" xattrs:security.capability=` + "\x01\x00bin" + `,user.a=1`},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var layers [][]byte
			for _, l := range tc.layers {
				layers = append(layers, tarOf(t, l...))
			}
			dir := writeLayout(t, v1.Config{}, layers...)
			o := DefaultFlattenOptions()
			if tc.opts != nil {
				tc.opts(&o)
			}
			out, st, err := flatten(t, "oci:"+dir+":test", o)
			if err != nil {
				t.Fatalf("Flatten = %v", err)
			}
			got := listTar(t, out)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("flattened entries (-want +got):\n%s", diff)
			}
			if st.Entries != len(got) {
				t.Errorf("Stats.Entries = %d, want %d", st.Entries, len(got))
			}
		})
	}
}

// TestFlattenHeaders checks which header fields survive: numeric ids, nanosecond times, xattrs; no names.
func TestFlattenHeaders(t *testing.T) {
	mt := time.Unix(1700000000, 123456789)
	at := time.Unix(1700000001, 5)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	hdr := &tar.Header{Name: "./f", Typeflag: tar.TypeReg, Mode: 0o100755, Uid: 3000000, Gid: 42, Uname: "u", Gname: "g",
		ModTime: mt, AccessTime: at, ChangeTime: mt, Size: 3, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v", "comment": "dropped"}}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, "abc")
	tw.Close()
	out, st, err := flatten(t, "rootfs:"+writeFile(t, b.Bytes()), DefaultFlattenOptions())
	if err != nil {
		t.Fatalf("Flatten = %v", err)
	}
	if want := (FlattenStats{Entries: 1, Files: 1, Bytes: 3}); st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	tr := tar.NewReader(bytes.NewReader(out))
	got, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	want := &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o755, Uid: 3000000, Gid: 42, Size: 3,
		ModTime: mt, AccessTime: at, ChangeTime: mt, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v", "uid": "3000000",
			"mtime": "1700000000.123456789", "atime": "1700000001.000000005", "ctime": "1700000000.123456789"},
		Xattrs: map[string]string{"user.k": "v"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("output header (-want +got):\n%s", diff)
	}
}

func TestFlattenDirectories(t *testing.T) {
	// Every output entry's parent is either emitted before it or never emitted (implicit).
	layers := [][]byte{
		tarOf(t, te{name: "a/b/c/"}, te{name: "a/b/c/f", body: "f"}, te{name: "x/y", body: "y"}),
		tarOf(t, te{name: "x/", mode: 0o700}, te{name: "a/", mode: 0o711}, te{name: "a/b/", mode: 0o750}, te{name: "a/b/g", body: "g"}),
	}
	out, _, err := flatten(t, "oci:"+writeLayout(t, v1.Config{}, layers...), DefaultFlattenOptions())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`D a 711`, `D a/b 750`, `D a/b/c 755`, `F a/b/c/f 644 "f"`, `D x 700`, `F x/y 644 "y"`, `F a/b/g 644 "g"`}
	if diff := cmp.Diff(want, listTar(t, out)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestFlattenCancel(t *testing.T) {
	dir := writeLayout(t, v1.Config{}, tarOf(t, te{name: "a", body: "a"}))
	im, err := Open(context.Background(), "oci:"+dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Flatten(ctx, im, io.Discard, DefaultFlattenOptions()); !errors.Is(err, context.Canceled) {
		t.Errorf("Flatten(cancelled) = %v, want context.Canceled", err)
	}
}

// A layer's bytes after its tar's end-of-archive marker are no part of the image. A few kilobytes of
// zstd expand to gigabytes of them, which Flatten used to decompress and spool to disk whole: more than
// maxTrailer of them is ErrCorrupt, while a tar writer's record padding is accepted.
func TestTrailerAfterArchive(t *testing.T) {
	base := tarOf(t, te{name: "f", body: "x"})
	zstdOf := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	padded := func(n int) []byte { return append(bytes.Clone(base), make([]byte, n)...) }
	bomb := padded(4 << 20)
	for _, tc := range []struct {
		name    string
		layer   []byte
		refused bool
	}{
		{"plain, 10 KiB record padding", padded(10 << 10), false},
		{"gzip, 10 KiB record padding", gzipOf(t, padded(10<<10)), false},
		{"plain, 2 MiB after the archive", padded(2 << 20), true},
		{"gzip, 4 MiB after the archive", gzipOf(t, bomb), true},
		{"zstd, 4 MiB after the archive", zstdOf(bomb), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := flatten(t, "rootfs:"+writeFile(t, tc.layer), DefaultFlattenOptions())
			if !tc.refused {
				if err != nil {
					t.Fatalf("Flatten = %v, want success", err)
				}
				if got := listTar(t, out); len(got) != 1 {
					t.Fatalf("Flatten wrote %q, want the one file", got)
				}
				return
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "after the end of the tar archive") {
				t.Fatalf("Flatten = %v, want ErrCorrupt naming the bytes after the archive", err)
			}
		})
	}
}
