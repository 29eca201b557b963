package ext4img_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/oci"
)

var debianImage struct {
	once sync.Once
	path string
	err  error
}

// debianExt4 builds the Debian bookworm minbase+python3 rootfs into ext4,
// once per test binary.
func debianExt4(t testing.TB) string {
	t.Helper()
	tarball := lodetest.DebianRootfs(t)
	debianImage.once.Do(func() {
		dir, err := os.MkdirTemp("", "lode-startset-")
		if err != nil {
			debianImage.err = err
			return
		}
		debianImage.path = filepath.Join(dir, "debian.ext4")
		debianImage.err = buildRootfs(tarball, debianImage.path)
	})
	if debianImage.err != nil {
		t.Fatal(debianImage.err)
	}
	return debianImage.path
}

func buildRootfs(tarball, out string) error {
	ctx := context.Background()
	im, err := oci.Open(ctx, "rootfs:"+tarball)
	if err != nil {
		return err
	}
	defer im.Close()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	go func() {
		_, err := oci.Flatten(ctx, im, pw, oci.DefaultFlattenOptions())
		pw.CloseWithError(err)
	}()
	_, err = ext4img.Build(ctx, pr, f, ext4img.DefaultOptions())
	pr.CloseWithError(err)
	return err
}

// debugfsBlocks lists the blocks of path's inode (no symlink followed), as
// e2fsprogs' debugfs reads them.
func debugfsBlocks(t testing.TB, img, path string) []int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "blocks "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs blocks %s: %v", path, err)
	}
	var bs []int64
	for _, f := range strings.Fields(string(out)) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("debugfs blocks %s: %q", path, out)
		}
		bs = append(bs, n)
	}
	return bs
}

// debugfsInodeBlock is the block holding path's inode.
func debugfsInodeBlock(t *testing.T, img, path string) int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "imap "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs imap %s: %v", path, err)
	}
	_, after, ok := strings.Cut(string(out), "located at block ")
	if !ok {
		t.Fatalf("debugfs imap %s: %q", path, out)
	}
	n, err := strconv.ParseInt(strings.TrimRight(strings.Fields(after)[0], ","), 10, 64)
	if err != nil {
		t.Fatalf("debugfs imap %s: %q", path, out)
	}
	return n
}

func covers(rs []ext4img.Range, blk int64, what string) bool {
	off := blk * 4096
	for _, r := range rs {
		if off >= r.Off && off < r.Off+r.Len && (what == "" || r.What == what) {
			return true
		}
	}
	return false
}

// TestStartSetDebian computes the start set of a real image for python3 and
// checks it against debugfs: it holds the superblock and descriptors, the
// inodes and blocks of the directories a start walks, and every block of
// python3, its ELF interpreter and the libraries it needs, reached through
// the image's symlinks (/usr/bin/python3 → python3.11, /lib64 → usr/lib64
// → /lib/x86_64-linux-gnu/…), and the loader's cache.
func TestStartSetDebian(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("debugfs"))
	img := debianExt4(t)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, notes, err := ext4img.StartSet(f, ext4img.StartSetOptions{Files: []string{"python3"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) > 0 {
		t.Errorf("notes: %q, want none", notes)
	}
	if len(rs) == 0 || rs[0].Off != 0 || rs[0].What != "metadata" {
		t.Fatalf("first range %+v, want the superblock's block", rs[:min(1, len(rs))])
	}
	for _, dir := range []string{"/", "/usr", "/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/lib/python3.11", "/usr/lib/python3.11/encodings", "/etc"} {
		for _, b := range debugfsBlocks(t, img, dir) {
			if !covers(rs, b, "metadata") {
				t.Errorf("directory %s: block %d not in the start set", dir, b)
			}
		}
		if b := debugfsInodeBlock(t, img, dir); !covers(rs, b, "metadata") {
			t.Errorf("directory %s: inode block %d not in the start set", dir, b)
		}
	}
	for _, file := range []string{"/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6",
		"/usr/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "/usr/lib/x86_64-linux-gnu/libexpat.so.1.8.10", "/etc/ld.so.cache"} {
		bs := debugfsBlocks(t, img, file)
		if len(bs) == 0 {
			t.Errorf("%s: debugfs lists no blocks", file)
		}
		for _, b := range bs {
			if !covers(rs, b, "") {
				t.Errorf("%s: block %d not in the start set", file, b)
				break
			}
		}
		if b := debugfsInodeBlock(t, img, file); !covers(rs, b, "metadata") {
			t.Errorf("%s: inode block %d not in the start set", file, b)
		}
	}
	var meta, files int64
	for _, r := range rs {
		if r.What == "metadata" {
			meta += r.Len
		} else {
			files += r.Len
		}
	}
	st, _ := f.Stat()
	chunks := ext4img.Chunks(rs, 512<<10, st.Size())
	t.Logf("start set: %d ranges, %d KiB metadata, %d KiB files, %d of %d chunks", len(rs), meta>>10, files>>10, len(chunks), (st.Size()+512<<10-1)/(512<<10))
	if len(chunks) == 0 || int64(len(chunks)) > st.Size()/(512<<10)/4 {
		t.Errorf("start set is %d chunks of a %d MiB image, want some and at most a quarter", len(chunks), st.Size()>>20)
	}
}

// TestStartSetStaticAndMissing: a static binary adds itself and no
// interpreter; a dynamic one whose interpreter and libraries are missing
// adds itself and says what is missing; a missing start file adds nothing
// but a note; metadata is there in every case.
func TestStartSetStaticAndMissing(t *testing.T) {
	busybox, err := os.ReadFile("/usr/bin/busybox") // static on Debian
	if err != nil {
		lodetest.Require(t, lodetest.Tool("busybox"))
	}
	dynamic, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range []struct {
		name string
		body []byte
		dir  bool
	}{{"bin", nil, true}, {"bin/busybox", busybox, false}, {"bin/true", dynamic, false}} {
		h := &tar.Header{Name: e.name, Mode: 0o755, ModTime: t0, Typeflag: tar.TypeReg, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.body)
	}
	tw.Close()
	img := buildFile(t, b.Bytes(), ext4img.DefaultOptions())
	tests := []struct {
		file      string
		wantFile  bool
		wantNotes []string
	}{
		{"/bin/busybox", true, nil},
		{"busybox", true, nil}, // found in the default PATH
		{"nosuchtool", false, []string{"not found in PATH"}},
		{"/bin/true", true, []string{"ELF interpreter", "libc.so.6 not in the image"}},
		{"/bin/missing", false, []string{"/bin/missing"}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.file, "/"), func(t *testing.T) {
			rs, notes, err := ext4img.StartSet(img, ext4img.StartSetOptions{Files: []string{tt.file}})
			if err != nil {
				t.Fatal(err)
			}
			var files []string
			for _, r := range rs {
				if r.What != "metadata" && (len(files) == 0 || files[len(files)-1] != r.What) {
					files = append(files, r.What)
				}
			}
			if got := len(files) > 0; got != tt.wantFile {
				t.Errorf("file ranges %q, want some: %v", files, tt.wantFile)
			}
			if len(files) > 1 {
				t.Errorf("file ranges %q, want only the start file's", files)
			}
			joined := strings.Join(notes, "\n")
			for _, w := range tt.wantNotes {
				if !strings.Contains(joined, w) {
					t.Errorf("notes %q lack %q", notes, w)
				}
			}
			if len(tt.wantNotes) == 0 && len(notes) > 0 {
				t.Errorf("notes %q, want none", notes)
			}
			if len(rs) == 0 || rs[0].What != "metadata" || rs[0].Off != 0 {
				t.Errorf("start set does not open with the superblock: %+v", rs[:min(1, len(rs))])
			}
		})
	}
}

func TestChunks(t *testing.T) {
	rs := []ext4img.Range{{Off: 0, Len: 4096}, {Off: 3 << 20, Len: 8192}, {Off: 4096, Len: 1 << 20}, {Off: 10 << 20, Len: 4096}}
	got := ext4img.Chunks(rs, 1<<20, 5<<20)
	want := []uint32{0, 3, 1}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("Chunks = %v, want %v (first-touch order, each once, nothing past the image)", got, want)
	}
}

// BenchmarkStartSet is the cost StartSet adds to a build of the Debian
// image: a walk of every directory and the python3 closure.
func BenchmarkStartSet(b *testing.B) {
	img := debianExt4(b)
	f, err := os.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for b.Loop() {
		if _, _, err := ext4img.StartSet(f, ext4img.StartSetOptions{Files: []string{"python3"}}); err != nil {
			b.Fatal(err)
		}
	}
}
