package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// gnuSparse returns a tar holding one old-GNU sparse file ('S'): logical
// size realSize, with data stored for [0, len(data)) only. archive/tar
// cannot write sparse files, so the header is laid out here by hand
// (GNU tar's format: sparse map at 386, real size at 483, base-256 numbers
// for sizes beyond 8 GiB).
func gnuSparse(name string, realSize int64, data []byte) []byte {
	h := make([]byte, 512)
	copy(h[0:], name)
	octal := func(b []byte, v int64) {
		if v >= 1<<33 { // base-256, big endian, high bit set
			for i := len(b) - 1; i > 0; i-- {
				b[i] = byte(v)
				v >>= 8
			}
			b[0] = 0x80
			return
		}
		s := fmt.Sprintf("%0*o", len(b)-1, v)
		copy(b, s)
		b[len(b)-1] = 0
	}
	octal(h[100:108], 0o644)
	octal(h[108:116], 0)
	octal(h[116:124], 0)
	octal(h[124:136], int64(len(data))) // stored bytes
	octal(h[136:148], 1700000000)
	h[156] = tar.TypeGNUSparse
	copy(h[257:], "ustar  \x00")
	octal(h[386:398], 0)                // first sparse entry: offset
	octal(h[398:410], int64(len(data))) // and length
	octal(h[483:495], realSize)
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	var b bytes.Buffer
	b.Write(h)
	b.Write(data)
	b.Write(make([]byte, (512-len(data)%512)%512))
	b.Write(make([]byte, 1024)) // end of archive
	return b.Bytes()
}

// manyEntries is a tar of n empty files spread over directories of 1000,
// headers only (512 bytes each).
func manyEntries(t testing.TB, n int) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mt := time.Unix(1700000000, 0)
	for i := range n {
		if i%1000 == 0 {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%04d/", i/1000), Mode: 0o755, ModTime: mt})
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%04d/f%d", i/1000, i), Mode: 0o644, ModTime: mt}); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	return b.Bytes()
}

// headerOnly is a tar that ends right after e's header (whatever size
// the header claims).
func headerOnly(t testing.TB, e te) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := tar.NewWriter(&b).WriteHeader(e.header()); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// deepPath is n components "d/d/…/f".
func deepPath(n int) string { return strings.Repeat("d/", n-1) + "f" }

// deepDirs is a tar that creates directories one level at a time down to
// depth n, then a file below the last.
func deepDirs(t testing.TB, n int) []byte {
	var es []te
	for i := 1; i < n; i++ {
		es = append(es, te{name: strings.Repeat("d/", i)})
	}
	es = append(es, te{name: deepPath(n), body: "x"})
	return tarOf(t, es...)
}

// TestEscapesAtLimits adds to TestBreakouts the hostile images of issue #7
// that test the limits: giant sparse files, millions of entries (scaled
// down through MaxEntries; bench/reliability.sh runs the default), deep
// trees, and setuid files when they are disallowed. Refused images fail with
// ErrUnsafeEntry naming the entry and write nothing; images at the limit are
// accepted and flattened exactly.
func TestEscapesAtLimits(t *testing.T) {
	const entries = 50_000
	many := manyEntries(t, entries) // entries files + entries/1000 directories
	total := entries + entries/1000
	refused := []struct {
		name   string
		tar    []byte
		opts   func(*FlattenOptions)
		naming string
	}{
		{"sparse file of 1 TiB at the default limit", gnuSparse("big", 1<<40, []byte("head")), nil, `"big"`},
		{"sparse file just over the default limit", gnuSparse("big", DefaultFlattenOptions().MaxFileSize+1, []byte("head")), nil, `"big"`},
		{"sparse file over a small limit", gnuSparse("big", 2<<20, []byte("head")), func(o *FlattenOptions) { o.MaxFileSize = 1 << 20 }, `"big"`},
		{"header claims 1 TiB, no data follows", headerOnly(t, te{name: "huge", size: 1 << 40}), nil, `"huge"`},
		{"one entry over MaxEntries", many, func(o *FlattenOptions) { o.MaxEntries = total - 1 }, fmt.Sprintf(`"d%04d/f%d"`, (entries-1)/1000, entries-1)},
		{"path one component deeper than the default", tarOf(t, te{name: deepPath(DefaultFlattenOptions().MaxDepth + 1), body: "x"}), nil, deepPath(DefaultFlattenOptions().MaxDepth + 1)},
		{"directories nested past the default depth", deepDirs(t, 300), nil, deepPath(DefaultFlattenOptions().MaxDepth + 1)[:2*DefaultFlattenOptions().MaxDepth]},
		{"setuid root file when disallowed", tarOf(t, te{name: "bin/sh", body: "x", mode: 0o4755}), func(o *FlattenOptions) { o.AllowSetuid = false }, `"bin/sh"`},
		{"setuid hard link target when disallowed", tarOf(t, te{name: "a", body: "x", mode: 0o6755}, te{name: "b", typ: tar.TypeLink, link: "a"}), func(o *FlattenOptions) { o.AllowSetuid = false }, `"a"`},
		{"char device outside /dev at the default", tarOf(t, te{name: "etc/", mode: 0o755}, te{name: "etc/kmem", typ: tar.TypeChar}), nil, `"etc/kmem"`},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultFlattenOptions()
			if tc.opts != nil {
				tc.opts(&o)
			}
			out, _, err := flatten(t, "rootfs:"+writeFile(t, tc.tar), o)
			if !errors.Is(err, ErrUnsafeEntry) {
				t.Fatalf("Flatten = %v, want ErrUnsafeEntry", err)
			}
			if !strings.Contains(err.Error(), tc.naming) {
				t.Errorf("Flatten error %q does not name %s", err, tc.naming)
			}
			if len(out) != 0 {
				t.Errorf("Flatten wrote %d bytes for a refused image", len(out))
			}
		})
	}

	accepted := []struct {
		name  string
		tar   []byte
		opts  func(*FlattenOptions)
		check func(t *testing.T, out []byte)
	}{
		{"sparse file within the limit", gnuSparse("s", 1<<20, []byte("head")), func(o *FlattenOptions) { o.MaxFileSize = 1 << 20 }, func(t *testing.T, out []byte) {
			want := append([]byte("head"), make([]byte, 1<<20-4)...)
			if got := fileIn(t, out, "s"); !bytes.Equal(got, want) {
				t.Errorf("sparse file flattened to %d bytes (head %q), want 1 MiB: head then zeros", len(got), got[:min(4, len(got))])
			}
		}},
		{"exactly MaxEntries", many, func(o *FlattenOptions) { o.MaxEntries = total }, func(t *testing.T, out []byte) {
			if n := countEntries(t, out); n != total {
				t.Errorf("flattened %d entries, want %d", n, total)
			}
		}},
		{"path at the default depth", tarOf(t, te{name: deepPath(DefaultFlattenOptions().MaxDepth), body: "x"}), nil, func(t *testing.T, out []byte) {
			if got := fileIn(t, out, deepPath(DefaultFlattenOptions().MaxDepth)); string(got) != "x" {
				t.Errorf("deep file = %q, want x", got)
			}
		}},
		{"setuid kept when allowed (the default)", tarOf(t, te{name: "bin/su", body: "x", mode: 0o4755}), nil, func(t *testing.T, out []byte) {
			if m := modeIn(t, out, "bin/su"); m&0o4000 == 0 {
				t.Errorf("bin/su mode %o lost its setuid bit", m)
			}
		}},
		{"absolute symlink kept for run-time resolution", tarOf(t, te{name: "etc/", mode: 0o755}, te{name: "etc/hostname", typ: tar.TypeSymlink, link: "/etc/shadow"}), nil, func(t *testing.T, out []byte) {
			if l := linkIn(t, out, "etc/hostname"); l != "/etc/shadow" {
				t.Errorf("etc/hostname -> %q, want /etc/shadow (resolved in the container's root at run time)", l)
			}
		}},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultFlattenOptions()
			if tc.opts != nil {
				tc.opts(&o)
			}
			out, _, err := flatten(t, "rootfs:"+writeFile(t, tc.tar), o)
			if err != nil {
				t.Fatalf("Flatten = %v", err)
			}
			tc.check(t, out)
		})
	}
	t.Logf("escape cases at the limits: %d refused, %d accepted at the limit", len(refused), len(accepted))
}

// entryIn returns the header and body of the flattened tar's entry name.
func entryIn(t *testing.T, out []byte, name string) (*tar.Header, []byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("no entry %q in the flattened tar", name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/") == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return h, b
		}
	}
}

func fileIn(t *testing.T, out []byte, name string) []byte { _, b := entryIn(t, out, name); return b }
func linkIn(t *testing.T, out []byte, name string) string {
	h, _ := entryIn(t, out, name)
	return h.Linkname
}
func modeIn(t *testing.T, out []byte, name string) int64 {
	h, _ := entryIn(t, out, name)
	return h.Mode
}

func countEntries(t *testing.T, out []byte) int {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(out))
	n := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}
