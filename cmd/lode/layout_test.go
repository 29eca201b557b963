package main

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
)

// TestBuildAlign checks the default layout, the chunk-aligned one, on the
// sample built with lode build's defaults: the image passes e2fsck, its
// large files start on chunk boundaries (as debugfs reads the image, not
// as lode predicts it), and lost+found holds nothing; --align=false (the
// old layout) puts the payload elsewhere.
func TestBuildAlign(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("e2fsck"), lodetest.Tool("debugfs"))
	c := newCLI(t)
	img := c.buildSample(t)
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	debugfsOf := func(img, req string) string {
		t.Helper()
		out, err := exec.Command("debugfs", "-R", req, img).Output()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v", req, err)
		}
		return strings.TrimSpace(string(out))
	}
	debugfs := func(req string) string { t.Helper(); return debugfsOf(img, req) }
	firstBlock := func(img, p string) int64 {
		t.Helper()
		out := debugfsOf(img, "bmap "+p+" 0")
		blk, err := strconv.ParseInt(strings.Fields(out + " x")[0], 10, 64)
		if err != nil {
			t.Fatalf("bmap %s: %q", p, out)
		}
		return blk
	}
	// The payload layer's file (8 MiB) and the demo's python3 binary.
	for _, p := range []string{"/data/model.bin", "/usr/bin/python3.11"} {
		if blk := firstBlock(img, p); blk%128 != 0 {
			t.Errorf("%s starts at block %d, not on a 512 KiB boundary", p, blk)
		}
	}
	// debugfs -p lines: /inode/mode/uid/gid/name/size/; only . and .. may
	// name an inode.
	for _, line := range strings.Split(debugfs("ls -p /lost+found"), "\n") {
		f := strings.Split(line, "/")
		if len(f) > 5 && f[1] != "0" && f[5] != "." && f[5] != ".." {
			t.Errorf("lost+found holds %s", line)
		}
	}
	old := filepath.Join(t.TempDir(), "old.ext4")
	if err := c.execLode(t, "build", sample(t), "--name", "demo-old", "--align=false", "--keep-image", old); err != nil {
		t.Fatalf("build --align=false = %v\n%s", err, c.stderr.String())
	}
	if blk := firstBlock(old, "/data/model.bin"); blk%128 == 0 {
		t.Errorf("--align=false: /data/model.bin starts at block %d, on a chunk boundary as in the aligned layout", blk)
	}
}

// TestBuildDefaults: lode build's flag defaults are build's.
func TestBuildDefaults(t *testing.T) {
	o := defaultBuildOptions()
	if c, err := manifest.ParseCompression(o.compress); err != nil || c != build.DefaultCompression || o.align != build.DefaultAlign {
		t.Errorf("defaultBuildOptions: --compress %q (%d, %v), --align %v; want %d, %v", o.compress, c, err, o.align, build.DefaultCompression, build.DefaultAlign)
	}
}
