package ext4img_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/lodetest"
)

// trickyTree has every case the aligned layout must follow to predict where
// tar2ext4 puts a file: inline files at the inline limit, attributes in the
// inode and in a block (before a large file's data), a directory given
// attributes after its children made it, long symlinks, hard links, empty
// files, and large files of odd sizes, in no helpful order.
func trickyTree() []entry {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	rnd := rand.New(rand.NewSource(2))
	blob := func(n int) []byte { b := make([]byte, n); rnd.Read(b); return b }
	reg := func(name string, body []byte, x map[string]string) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: t0, PAXRecords: x}, body: body}
	}
	long := strings.Repeat("x", 300)
	return []entry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "a", Mode: 0o755, ModTime: t0, PAXRecords: map[string]string{"SCHILY.xattr.user.big": long}}},
		reg("a/small", blob(10), nil),
		reg("a/inline100", blob(100), nil),
		reg("a/inline-xattr", blob(120), map[string]string{"SCHILY.xattr.user.k": "v"}),
		reg("a/edge136", blob(136), nil),
		reg("a/edge137", blob(137), nil),
		reg("a/big-xattr", blob(700<<10+3), map[string]string{"SCHILY.xattr.user.big": long}),
		reg("a/two-xattrs", blob(5000), map[string]string{"SCHILY.xattr.user.a": strings.Repeat("a", 50), "SCHILY.xattr.user.b": strings.Repeat("b", 60)}),
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "b/long-link", Linkname: "/" + strings.Repeat("target/", 20), ModTime: t0}},
		reg("b/odd", blob(5000), nil),
		reg("b/empty", nil, nil),
		reg("b/f512", blob(512<<10), nil),
		reg("b/f511", blob(511<<10), nil),
		reg("b/big", blob(1<<20+1), nil),
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "b/big-link", Linkname: "b/big", ModTime: t0}},
		reg("c/x", blob(4097), nil),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "c", Mode: 0o750, ModTime: t0, PAXRecords: map[string]string{"SCHILY.xattr.user.late": long}}},
		reg("c/after-late-dir", blob(2<<20+77), map[string]string{"SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0"}),
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "c/fifo", Mode: 0o644, ModTime: t0}},
		reg("d/e/f/deep", blob(3<<20+5), nil),
	}
}

func buildFile(t *testing.T, tb []byte, o ext4img.Options) *os.File {
	t.Helper()
	path, _ := buildWith(t, tb, o)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

type roFile struct{ *os.File }

func (roFile) WriteAt([]byte, int64) (int, error) { return 0, errors.New("read-only") }

// TestAlignedLayout checks the layout's prediction against the image: with
// Align, every regular file of at least Align bytes starts on the
// boundary, in one run of blocks.
func TestAlignedLayout(t *testing.T) {
	const align = 512 << 10
	for _, tree := range [][]entry{sampleTree(), trickyTree()} {
		o := ext4img.DefaultOptions()
		o.Align = align
		f := buildFile(t, tarOf(t, tree), o)
		checked := 0
		for _, e := range tree {
			if e.hdr.Typeflag != tar.TypeReg || len(e.body) < align {
				continue
			}
			exts, err := ext4img.FileExtents(roFile{f}, e.hdr.Name)
			if err != nil {
				t.Fatalf("%s: %v", e.hdr.Name, err)
			}
			if len(exts) == 0 || int64(exts[0][0])*4096%align != 0 {
				t.Errorf("%s: extents %v; want the first block on a multiple of %d blocks", e.hdr.Name, exts, align/4096)
			}
			checked++
		}
		if checked == 0 {
			t.Fatal("no large file in the tree")
		}
	}
}

// TestAlignedLayoutSharesChunks is the point of the layout: a large file
// yields the same chunks whatever precedes it, so two images whose first
// file differs in size still share the large file's chunks.
func TestAlignedLayoutSharesChunks(t *testing.T) {
	const cs = 512 << 10
	rnd := rand.New(rand.NewSource(3))
	big := make([]byte, 4<<20+999)
	rnd.Read(big)
	tree := func(first int) []entry {
		t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
		return []entry{
			{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/config", Mode: 0o644, ModTime: t0}, body: bytes.Repeat([]byte("c"), first)},
			{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/lib/big.so", Mode: 0o755, ModTime: t0}, body: big},
		}
	}
	chunks := func(img []byte) map[[32]byte]bool {
		m := map[[32]byte]bool{}
		for off := 0; off < len(img); off += cs {
			m[sha256.Sum256(img[off:min(off+cs, len(img))])] = true
		}
		return m
	}
	shared := func(o ext4img.Options) int {
		_, a := buildWith(t, tarOf(t, tree(10_000)), o)
		_, b := buildWith(t, tarOf(t, tree(70_000)), o)
		ca, cb := chunks(a), chunks(b)
		n := 0
		for k := range ca {
			if cb[k] {
				n++
			}
		}
		return n
	}
	aligned := ext4img.DefaultOptions()
	aligned.Align = cs
	plain, al := shared(ext4img.DefaultOptions()), shared(aligned)
	// The big file is 8 full chunks and a tail; aligned, all 8 full ones are
	// shared (plus chunks of zeros or identical metadata).
	if al < 8 || al <= plain {
		t.Errorf("shared chunks: %d aligned, %d without; want ≥ 8 and more than without", al, plain)
	}
}

func TestAlignedLayoutRefusesReservedNames(t *testing.T) {
	o := ext4img.DefaultOptions()
	o.Align = 512 << 10
	tb := tarOf(t, []entry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lost+found/.lode-align-000001", Mode: 0o644}, body: []byte("mine")}})
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := ext4img.Build(context.Background(), bytes.NewReader(tb), f, o); !errors.Is(err, ext4img.ErrReservedName) {
		t.Fatalf("Build = %v, want ErrReservedName", err)
	}
	o.Align = 1000
	if _, err := ext4img.Build(context.Background(), bytes.NewReader(tarOf(t, sampleTree())), f, o); err == nil {
		t.Fatal("Build with Align 1000 succeeded")
	}
}

// FuzzAlign feeds tars to an aligned build: it must fail cleanly or write an
// image, never panic or hang. An input is a lodetest tar program (files in
// units of 9 KiB (up to 135 KiB), so that the 64 KiB alignment has files to place, up to
// 512 KiB in all) — raw tars made the fuzzer spend its run minimizing
// (see lodetest.TarProgram): a few hundred executions in 25 s.
func FuzzAlign(f *testing.F) {
	op := lodetest.TarOp
	f.Add(bytes.Join([][]byte{
		op(lodetest.TarDir|lodetest.TarXattr|0x50, "a", ""),
		op(lodetest.TarReg|0x10, "a/small", ""),
		op(lodetest.TarReg|lodetest.TarXattr|0x20, "a/x", ""),
		op(lodetest.TarSymlink, "b/l", "/target/target/target/target/target/target/target/target/target"),
		op(lodetest.TarReg|0xf0, "b/big", ""),
		op(lodetest.TarLink, "b/big-link", "b/big"),
		op(lodetest.TarReg|0x30, "c/x", ""),
		op(lodetest.TarDir|lodetest.TarXattr, "c", ""),
		op(lodetest.TarFifo, "c/fifo", ""),
		op(lodetest.TarReg, "b/empty", ""),
	}, nil))
	f.Add([]byte("not a tar"))
	// Images of at most 256 MiB: reserving metadata for the 1 TiB maximum
	// took ~4 ms a build, most of an execution.
	defer ext4img.SetMaxDiskSize(256 << 20)()
	// Build runs the aligner in a goroutine behind a pipe, so one input's
	// coverage differs from run to run: bound the minimizer (see
	// lodetest.BoundMinimize).
	lodetest.BoundMinimize("200x")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > lodetest.MaxTarProgram {
			return
		}
		layers := lodetest.TarProgram(data, lodetest.TarOptions{Unit: 9 << 10, MaxBytes: 512 << 10, MaxLayers: 1})
		o := ext4img.DefaultOptions()
		o.Align = 64 << 10
		// In memory: a file on disk per input left the fuzzer waiting on
		// writeback (0 execs/s for seconds at a time in CI).
		_, _ = ext4img.Build(context.Background(), bytes.NewReader(layers[0]), &memOutput{}, o)
	})
}

// The fuzz target's in-memory output gets the same image as a file.
func TestMemOutputMatchesFile(t *testing.T) {
	data := tarOf(t, trickyTree())
	o := ext4img.DefaultOptions()
	o.Align = 64 << 10
	path := filepath.Join(t.TempDir(), "img")
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	st, err := ext4img.Build(context.Background(), bytes.NewReader(data), fh, o)
	if err != nil {
		t.Fatal(err)
	}
	m := &memOutput{}
	st2, err := ext4img.Build(context.Background(), bytes.NewReader(data), m, o)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, m.size)
	if _, err := m.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if st != st2 || !bytes.Equal(got, want) {
		t.Errorf("in memory: %d bytes (stats %+v); file: %d bytes (stats %+v); equal %v", len(got), st2, len(want), st, bytes.Equal(got, want))
	}
}

// memOutput is a sparse in-memory ext4img.Output: 4 KiB pages, zero where
// never written.
type memOutput struct {
	pages     map[int64]*[4096]byte
	size, off int64
}

func (m *memOutput) page(i int64, create bool) *[4096]byte {
	p := m.pages[i]
	if p == nil && create {
		if m.pages == nil {
			m.pages = map[int64]*[4096]byte{}
		}
		p = new([4096]byte)
		m.pages[i] = p
	}
	return p
}

func (m *memOutput) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	n := 0
	for n < len(b) && off+int64(n) < m.size {
		pos := off + int64(n)
		k := min(len(b)-n, 4096-int(pos%4096), int(m.size-pos))
		if p := m.page(pos/4096, false); p != nil {
			copy(b[n:n+k], p[pos%4096:])
		} else {
			clear(b[n : n+k])
		}
		n += k
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memOutput) WriteAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	for n := 0; n < len(b); {
		pos := off + int64(n)
		k := min(len(b)-n, 4096-int(pos%4096))
		copy(m.page(pos/4096, true)[pos%4096:], b[n:n+k])
		n += k
	}
	m.size = max(m.size, off+int64(len(b)))
	return len(b), nil
}

func (m *memOutput) Read(b []byte) (int, error) {
	n, err := m.ReadAt(b, m.off)
	m.off += int64(n)
	return n, err
}

func (m *memOutput) Write(b []byte) (int, error) {
	n, err := m.WriteAt(b, m.off)
	m.off += int64(n)
	return n, err
}

func (m *memOutput) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += m.off
	case io.SeekEnd:
		off += m.size
	}
	if off < 0 {
		return 0, errors.New("negative position")
	}
	m.off = off
	return off, nil
}
