package ext4img_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/lodetest"
)

type entry struct {
	hdr  tar.Header
	body []byte
}

// sampleTree is a small tree with every kind of entry the writer must keep.
func sampleTree() []entry {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	rnd := rand.New(rand.NewSource(1))
	big := make([]byte, 3<<20+123)
	rnd.Read(big)
	return []entry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc", Mode: 0o755, ModTime: t0}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/hostname", Mode: 0o644, ModTime: t0}, body: []byte("lode\n")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/shadow", Mode: 0o640, Uid: 0, Gid: 42, ModTime: t0}, body: []byte("root:*:19000:0:99999:7:::\n")},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/bin", Mode: 0o755, ModTime: t0}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/tool", Mode: 0o4755, Uid: 0, Gid: 0, ModTime: t0}, body: big},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/tool-link", Linkname: "usr/bin/tool", ModTime: t0}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/sh", Linkname: "/bin/dash", ModTime: t0}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/app/data", Mode: 0o600, Uid: 1000, Gid: 1000, ModTime: t0,
			PAXRecords: map[string]string{"SCHILY.xattr.user.lode": "yes"}}, body: bytes.Repeat([]byte("x"), 9000)},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o644, ModTime: t0}},
	}
}

func tarOf(t testing.TB, es []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := e.hdr
		h.Size = int64(len(e.body))
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func build(t testing.TB, tarball []byte) (string, []byte) {
	t.Helper()
	return buildWith(t, tarball, ext4img.DefaultOptions())
}

func buildWith(t testing.TB, tarball []byte, o ext4img.Options) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img.ext4")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := ext4img.Build(context.Background(), bytes.NewReader(tarball), f, o)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != st.Size {
		t.Fatalf("Stats.Size = %d, file has %d bytes", st.Size, len(b))
	}
	return path, b
}

// layouts are the option sets every property test runs with: the default
// layout and the chunk-aligned one, each on the sample tree and on a tree
// made to trip the aligned layout's bookkeeping.
func layouts() []struct {
	name string
	o    ext4img.Options
	tree []entry
} {
	aligned := ext4img.DefaultOptions()
	aligned.Align = 512 << 10
	return []struct {
		name string
		o    ext4img.Options
		tree []entry
	}{
		{"default", ext4img.DefaultOptions(), sampleTree()},
		{"default/tricky", ext4img.DefaultOptions(), trickyTree()},
		{"aligned", aligned, sampleTree()},
		{"aligned/tricky", aligned, trickyTree()},
	}
}

func TestBuildDeterministic(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			tb := tarOf(t, l.tree)
			_, a := buildWith(t, tb, l.o)
			t.Setenv("TZ", "Asia/Tokyo")
			old := unix.Umask(0o077)
			defer unix.Umask(old)
			_, b := buildWith(t, tb, l.o)
			if sha256.Sum256(a) != sha256.Sum256(b) {
				t.Fatalf("two builds of the same tree differ (%d vs %d bytes)", len(a), len(b))
			}
		})
	}
}

func TestBuildPassesE2fsck(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("e2fsck"))
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			path, _ := buildWith(t, tarOf(t, l.tree), l.o)
			out, err := exec.Command("e2fsck", "-fn", path).CombinedOutput()
			if err != nil {
				t.Fatalf("e2fsck -fn: %v\n%s", err, out)
			}
		})
	}
}

func TestBuildCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := ext4img.Build(ctx, bytes.NewReader(tarOf(t, sampleTree())), f, ext4img.DefaultOptions()); err == nil {
		t.Fatal("Build with a cancelled context succeeded")
	}
}

// TestBuildLoopMount mounts the image through a read-only loop device and
// checks every entry's content, mode, owner, link and xattr.
func TestBuildLoopMount(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.Loop)
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) { checkLoopMount(t, l.tree, l.o) })
	}
}

func checkLoopMount(t *testing.T, tree []entry, o ext4img.Options) {
	path, _ := buildWith(t, tarOf(t, tree), o)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "ro,loop,noload", path, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	// The image holds the input's files and nothing else (the aligned
	// layout's padding files are gone).
	if lf, err := os.ReadDir(filepath.Join(mnt, "lost+found")); err != nil || len(lf) != 0 {
		t.Errorf("lost+found holds %d entries (%v), want none", len(lf), err)
	}
	for _, e := range tree {
		p := filepath.Join(mnt, e.hdr.Name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("Lstat(%s): %v", e.hdr.Name, err)
			continue
		}
		switch e.hdr.Typeflag {
		case tar.TypeReg:
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, e.body) {
				t.Errorf("%s: content differs (err %v, %d vs %d bytes)", e.hdr.Name, err, len(got), len(e.body))
			}
			if got, want := st.Mode&0o7777, uint32(e.hdr.Mode); got != want {
				t.Errorf("%s: mode %o, want %o", e.hdr.Name, got, want)
			}
			if st.Uid != uint32(e.hdr.Uid) || st.Gid != uint32(e.hdr.Gid) {
				t.Errorf("%s: owner %d:%d, want %d:%d", e.hdr.Name, st.Uid, st.Gid, e.hdr.Uid, e.hdr.Gid)
			}
			if st.Mtim.Sec != e.hdr.ModTime.Unix() {
				t.Errorf("%s: mtime %d, want %d", e.hdr.Name, st.Mtim.Sec, e.hdr.ModTime.Unix())
			}
			for k, v := range e.hdr.PAXRecords {
				name := strings.TrimPrefix(k, "SCHILY.xattr.")
				buf := make([]byte, 4096)
				n, err := unix.Lgetxattr(p, name, buf)
				if err != nil || string(buf[:n]) != v {
					t.Errorf("%s: xattr %s = %q (%v), want %q", e.hdr.Name, name, buf[:n], err, v)
				}
			}
		case tar.TypeSymlink:
			got, err := os.Readlink(p)
			if diff := cmp.Diff(e.hdr.Linkname, got); err != nil || diff != "" {
				t.Errorf("%s: link target (-want +got): %s %v", e.hdr.Name, diff, err)
			}
		case tar.TypeLink:
			var target unix.Stat_t
			if err := unix.Lstat(filepath.Join(mnt, e.hdr.Linkname), &target); err != nil || target.Ino != st.Ino {
				t.Errorf("%s: not a hard link of %s (inodes %d, %d)", e.hdr.Name, e.hdr.Linkname, st.Ino, target.Ino)
			}
		case tar.TypeFifo:
			if st.Mode&unix.S_IFMT != unix.S_IFIFO {
				t.Errorf("%s: type %o, want fifo", e.hdr.Name, st.Mode&unix.S_IFMT)
			}
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	rnd := rand.New(rand.NewSource(2))
	var es []entry
	total := 0
	for i := 0; total < 64<<20; i++ {
		body := make([]byte, rnd.Intn(1<<20))
		rnd.Read(body)
		total += len(body)
		es = append(es, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/f" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Mode: 0o644}, body: body})
	}
	tb := tarOf(b, es)
	path := filepath.Join(b.TempDir(), "img")
	for _, align := range []int64{0, 512 << 10} {
		b.Run(fmt.Sprintf("align=%d", align), func(b *testing.B) {
			o := ext4img.DefaultOptions()
			o.Align = align
			b.SetBytes(int64(total))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				f, err := os.Create(path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := ext4img.Build(context.Background(), bytes.NewReader(tb), f, o); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
		// The same entries written by their producer (oci.FlattenInto's
		// path in lode build): no stream to parse, no second rewrite.
		b.Run(fmt.Sprintf("entries/align=%d", align), func(b *testing.B) {
			o := ext4img.DefaultOptions()
			o.Align = align
			b.SetBytes(int64(total))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				buildEntries(b, path, es, o)
			}
		})
	}
}

// buildEntries writes es through BuildEntries, as Build's stream would
// carry them.
func buildEntries(t testing.TB, path string, es []entry, o ext4img.Options) ext4img.Stats {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := ext4img.BuildEntries(context.Background(), f, o, func(ew ext4img.EntryWriter) error {
		for _, e := range es {
			h := e.hdr
			h.Size = int64(len(e.body))
			h.Format = tar.FormatPAX
			if err := ew.WriteHeader(&h); err != nil {
				return err
			}
			if _, err := ew.Write(e.body); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("BuildEntries: %v", err)
	}
	return st
}

// TestBuildEntries: BuildEntries writes the image Build writes from the
// same entries' tar stream, in every layout.
func TestBuildEntries(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			_, want := buildWith(t, tarOf(t, l.tree), l.o)
			path := filepath.Join(t.TempDir(), "entries.ext4")
			st := buildEntries(t, path, l.tree, l.o)
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size != int64(len(got)) || !bytes.Equal(got, want) {
				t.Fatalf("BuildEntries wrote %d bytes (stats %d), Build %d; equal %v", len(got), st.Size, len(want), bytes.Equal(got, want))
			}
		})
	}
}

// TestBuildEntriesErrors: the producer's error ends the build and is
// returned as it is; the aligned layout's reserved names are refused.
func TestBuildEntriesErrors(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	boom := errors.New("producer failed")
	if _, err := ext4img.BuildEntries(context.Background(), f, ext4img.DefaultOptions(), func(ew ext4img.EntryWriter) error {
		if err := ew.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f", Size: 3, Mode: 0o644}); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Errorf("BuildEntries = %v, want the producer's error", err)
	}
	o := ext4img.DefaultOptions()
	o.Align = 512 << 10
	if _, err := ext4img.BuildEntries(context.Background(), f, o, func(ew ext4img.EntryWriter) error {
		return ew.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "lost+found/.lode-align-000001", Mode: 0o644})
	}); !errors.Is(err, ext4img.ErrReservedName) {
		t.Errorf("BuildEntries of a reserved name = %v, want ErrReservedName", err)
	}
}
