package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
)

// FuzzFlatten feeds images to Flatten. It must not panic; if it succeeds, its output must be a tar of
// clean relative names whose hard links point to entries written before them and whose relative symlinks
// stay inside the root.
//
// An input is either raw layer bytes (a first byte with its low bit set, then at most maxRawFuzz bytes:
// gzip, zstd or tar) or a lodetest tar program that writes one or more layers. Why not only raw tars: see
// lodetest.TarProgram (on multi-kilobyte tars this target spent its whole run in the fuzzer's minimizer,
// 40 counted executions in 25 s, although one execution takes ~15 µs). Programs of a few dozen bytes reach
// the flattener's logic (whiteouts, opaque directories, hard links across layers, escapes), while short
// raw inputs keep the decompressors and archive/tar's header parsing under the fuzzer.
func FuzzFlatten(f *testing.F) {
	f.Add(append([]byte{1}, gzipOf(f, tarOf(f, te{name: "g", body: "gz"}))...))
	f.Add(append([]byte{1}, gzipOf(f, tarOf(f, te{name: "a/"}, te{name: "a/b", body: "b"}, te{name: "h", typ: tar.TypeLink, link: "a/b"}))...))
	f.Add([]byte{1, '.', 0, 0, 0})
	op := lodetest.TarOp
	f.Add(fuzzProgram(op(lodetest.TarDir, "a/", ""), op(lodetest.TarReg|0x10, "a/b", ""), op(lodetest.TarLink, "h", "a/b")))
	f.Add(fuzzProgram(op(lodetest.TarDir, "./", ""), op(lodetest.TarSymlink, "s", "/etc"), op(lodetest.TarReg, "a/.wh.x", ""), op(lodetest.TarReg, "f", ""), op(lodetest.TarReg|lodetest.TarXattr, "f", "")))
	f.Add(fuzzProgram(op(lodetest.TarReg, "../../etc/passwd", "")))
	f.Add(fuzzProgram(op(lodetest.TarReg, "a/b", ""), op(lodetest.TarLink, "a/c", "a/b"), op(lodetest.TarLayer, "", ""), op(lodetest.TarReg, "a/.wh.b", ""), op(lodetest.TarReg, "a/.wh..wh..opq", "")))
	f.Add(fuzzProgram(op(lodetest.TarReg, "x", ""), op(lodetest.TarLayer|lodetest.TarGzip, "", ""), op(lodetest.TarSymlink, "y", "../x"), op(lodetest.TarCorrupt, "\x01", "\x30"), op(lodetest.TarChar, "dev", "")))
	dir := f.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir = fuzzShmDir(f)
	}
	// At ~15 µs an execution, the minimizer's quadratic search over a 200-byte
	// input still takes seconds; 500 executions shrink what can be shrunk.
	lodetest.BoundMinimize("500x")
	f.Fuzz(func(t *testing.T, data []byte) {
		im := fuzzImage(data)
		if im == nil {
			return
		}
		o := DefaultFlattenOptions()
		o.MaxFileSize = 1 << 20
		o.TempDir = dir
		var out bytes.Buffer
		st, err := Flatten(context.Background(), im, &out, o)
		// FlattenOnce writes the same, or answers ErrTwoPasses.
		var once bytes.Buffer
		ost, oerr := FlattenOnce(context.Background(), fuzzImage(data), &once, o)
		switch {
		case errors.Is(oerr, ErrTwoPasses):
		case oerr != nil:
			t.Fatalf("FlattenOnce = %v, want nil or ErrTwoPasses (Flatten: %v)", oerr, err)
		case err != nil:
			t.Fatalf("FlattenOnce succeeded where Flatten failed: %v", err)
		case !bytes.Equal(once.Bytes(), out.Bytes()) || ost != st:
			t.Fatalf("FlattenOnce wrote %d bytes %+v, Flatten %d bytes %+v", once.Len(), ost, out.Len(), st)
		}
		if err != nil {
			return
		}
		checkFlattened(t, out.Bytes())
	})
}

// checkFlattened asserts what every output of Flatten must be.
func checkFlattened(t *testing.T, out []byte) {
	seen := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(out))
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
}

const maxRawFuzz = 256 // raw inputs longer than this are skipped (see FuzzFlatten)

// fuzzImage builds the in-memory image an input describes; nil if there is nothing to flatten.
// fuzzProgram is a FuzzFlatten input running the lodetest tar program ops.
func fuzzProgram(ops ...[]byte) []byte {
	return append([]byte{0}, bytes.Join(ops, nil)...)
}

func fuzzImage(data []byte) *Image {
	if len(data) == 0 {
		return nil
	}
	var layers [][]byte
	if data[0]&1 == 1 {
		if len(data)-1 > maxRawFuzz {
			return nil
		}
		layers = [][]byte{data[1:]}
	} else {
		if len(data)-1 > lodetest.MaxTarProgram {
			return nil
		}
		layers = lodetest.TarProgram(data[1:], lodetest.TarOptions{})
	}
	im := &Image{source: "fuzz", digest: "sha256:fuzz"}
	for i, b := range layers {
		im.layers = append(im.layers, &layer{index: i, digest: "sha256:fuzz",
			open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }})
	}
	return im
}

// fuzzShmDir is a temporary directory in /dev/shm for the spools of compressed inputs, so that an
// execution does no disk I/O.
func fuzzShmDir(f *testing.F) string {
	d, err := os.MkdirTemp("/dev/shm", "lode-fuzz-*")
	if err != nil {
		return f.TempDir()
	}
	f.Cleanup(func() { os.RemoveAll(d) })
	return d
}
