package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store/file"
)

// TestOpenOldLayoutImage reads an image built before lode build's defaults
// became the chunk-aligned layout and zstd chunks (issue #22): the store
// and keyring in testdata/oldlayout were written by `lode build` of commit
// f0e9d3d (old layout, raw chunks, --chunk-size 16384) from a tar of four
// files (/data/words.txt, /etc/debian_version, /etc/hostname, /usr/bin/tool),
// with --keep-image, whose SHA-256 is oldLayoutSHA256. Today's worker must
// return that image byte for byte, and /usr/bin/tool must start where the
// old layout put it (block 77, not on a 4-block chunk boundary), so the
// fixture keeps testing the old layout whatever the defaults become.
func TestOpenOldLayoutImage(t *testing.T) {
	const oldLayoutSHA256 = "6fb4d4a0e1fc2a2abff2afa247a4394fb51abfca1171c05e4390d01db100734b"
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", "testdata/oldlayout/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copying the fixture: %v\n%s", err, out)
	}
	ctx := context.Background()
	st, err := file.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	// git keeps no file modes but the executable bit; a keyring must be 0600.
	if err := os.Chmod(filepath.Join(dir, "keyring.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.LoadFileKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{CacheDir: filepath.Join(dir, "cache"), DiskBytes: 8 << 20, MemBytes: 8 << 20, AllowStoreSecret: true}
	w, err := Open(ctx, st, kr, "default", "old", o, nil, nil)
	if err != nil {
		t.Fatalf("Open(default/old) = %v", err)
	}
	defer w.Close()
	if w.Manifest.Compression != manifest.CompressionNone || w.Manifest.ChunkSize != 16384 {
		t.Fatalf("fixture manifest: compression %d, chunk size %d; want raw 16384", w.Manifest.Compression, w.Manifest.ChunkSize)
	}
	img := make([]byte, w.Image.Size())
	if n, err := w.Image.ReadAt(ctx, img, 0); err != nil || n != len(img) {
		t.Fatalf("ReadAt(whole image) = %d, %v; want %d", n, err, len(img))
	}
	if sum := sha256.Sum256(img); hex.EncodeToString(sum[:]) != oldLayoutSHA256 {
		t.Fatalf("image SHA-256 %x, want %s (the image the old build kept)", sum, oldLayoutSHA256)
	}

	lodetest.Require(t, lodetest.Tool("debugfs"))
	path := filepath.Join(dir, "old.ext4")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	debugfs := func(req string) string {
		t.Helper()
		out, err := exec.Command("debugfs", "-R", req, path).Output()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v", req, err)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct{ req, want string }{
		{"cat /etc/hostname", "lode-old-layout"},
		{"cat /etc/debian_version", "12.15"},
		{"bmap /usr/bin/tool 0", "77"},
	} {
		if got := debugfs(tc.req); got != tc.want {
			t.Errorf("debugfs %q = %q, want %q", tc.req, got, tc.want)
		}
	}
}
