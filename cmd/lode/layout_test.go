package main

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
)

// TestBuildAlign builds the sample with the chunk-aligned layout: the image
// passes e2fsck, its large files start on chunk boundaries (as debugfs reads
// the image, not as lode predicts it), and lost+found holds nothing.
func TestBuildAlign(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("e2fsck"), lodetest.Tool("debugfs"))
	c := newCLI(t)
	c.buildSample(t)
	img := filepath.Join(t.TempDir(), "aligned.ext4")
	if err := c.execLode(t, "build", sample(t), "--name", "demo-aligned", "--align", "--keep-image", img); err != nil {
		t.Fatalf("build --align = %v\n%s", err, c.stderr.String())
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	debugfs := func(req string) string {
		t.Helper()
		out, err := exec.Command("debugfs", "-R", req, img).Output()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v", req, err)
		}
		return strings.TrimSpace(string(out))
	}
	// The payload layer's file (8 MiB) and the demo's python3 binary.
	for _, p := range []string{"/data/model.bin", "/usr/bin/python3.11"} {
		out := debugfs("bmap " + p + " 0")
		blk, err := strconv.ParseInt(strings.Fields(out + " x")[0], 10, 64)
		if err != nil {
			t.Fatalf("bmap %s: %q", p, out)
		}
		if blk%128 != 0 {
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
}
