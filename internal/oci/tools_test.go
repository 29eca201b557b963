package oci

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lode-dev/lode/internal/lodetest"
	"golang.org/x/sys/unix"
)

func run(t *testing.T, dir string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// umociLayout builds a two-layer OCI layout with umoci. Layer 0: files, a setuid binary with a hard link,
// absolute and relative symlinks, a user.* xattr. Layer 1 deletes a file, the original of the hard link
// and a directory's only file (recreating the directory), and adds files.
func umociLayout(t *testing.T) string {
	lodetest.Require(t, lodetest.Tool("umoci"))
	work := t.TempDir()
	run(t, work, "umoci", "init", "--layout", "L")
	run(t, work, "umoci", "new", "--image", "L:base")
	run(t, work, "umoci", "config", "--image", "L:base", "--config.cmd", "/bin/app", "--config.env", "A=1", "--config.workingdir", "/data", "--config.user", "1000:1000")
	run(t, work, "umoci", "unpack", "--image", "L:base", "B")
	root := filepath.Join(work, "B", "rootfs")
	mk := func(p, body string, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("etc/hello", "hello\n", 0o644)
	mk("etc/gone", "gone\n", 0o644)
	mk("usr/bin/hard", "bin\n", 0o4755|os.ModeSetuid)
	mk("data/keep/k", "k\n", 0o600)
	mk("data/old/o", "o\n", 0o644)
	if err := os.Link(filepath.Join(root, "usr/bin/hard"), filepath.Join(root, "usr/bin/tool")); err != nil {
		t.Fatal(err)
	}
	os.Symlink("/usr/bin/tool", filepath.Join(root, "usr/bin/abs"))
	os.Symlink("../bin/tool", filepath.Join(root, "usr/bin/rel"))
	if err := unix.Setxattr(filepath.Join(root, "etc/hello"), "user.lode", []byte("v1"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	run(t, work, "umoci", "repack", "--refresh-bundle", "--image", "L:v1", "B")
	os.Remove(filepath.Join(root, "etc/gone"))
	os.Remove(filepath.Join(root, "usr/bin/hard"))
	os.RemoveAll(filepath.Join(root, "data/old"))
	mk("data/old/n", "n\n", 0o644)
	mk("etc/new", "new\n", 0o644)
	run(t, work, "umoci", "repack", "--refresh-bundle", "--image", "L:v2", "B")
	return filepath.Join(work, "L")
}

func TestUmociLayout(t *testing.T) {
	dir := umociLayout(t)
	im, err := Open(context.Background(), "oci:"+dir+":v2")
	if err != nil {
		t.Fatal(err)
	}
	if im.Layers() != 2 || !strings.HasPrefix(im.Digest(), "sha256:") {
		t.Errorf("Layers, Digest = %d, %q; want 2, sha256:…", im.Layers(), im.Digest())
	}
	wantCfg := Config{Cmd: []string{"/bin/app"}, Env: []string{"A=1"}, WorkingDir: "/data", User: "1000:1000"}
	if diff := cmp.Diff(wantCfg, im.Config(), cmp.Comparer(func(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") })); diff != "" {
		t.Errorf("Config (-want +got):\n%s", diff)
	}
	var out bytes.Buffer
	st, err := Flatten(context.Background(), im, &out, DefaultFlattenOptions())
	if err != nil {
		t.Fatalf("Flatten = %v", err)
	}
	// umoci writes each layer sorted by name; the root "." comes first. Layer 1's "data" and "etc" were
	// re-declared: they stay at their layer-0 position. Deleting usr/bin/hard changed usr/bin/tool's
	// link count, so umoci wrote tool again in layer 1 (a whiteout for hard, a full copy of tool): it
	// moves to layer 1's position, setuid bit kept. The symlinks still name "tool".
	want := []string{
		`D . 755`,
		`D data 755`,
		`D data/keep 755`,
		`F data/keep/k 600 "k\n"`,
		`D data/old 755`,
		`D etc 755`,
		`F etc/hello 644 "hello\n" xattrs:user.lode=v1`,
		`D usr 755`,
		`D usr/bin 755`,
		`S usr/bin/abs -> /usr/bin/tool`,
		`S usr/bin/rel -> ../bin/tool`,
		`F data/old/n 644 "n\n"`,
		`F etc/new 644 "new\n"`,
		`F usr/bin/tool 4755 "bin\n"`,
	}
	if diff := cmp.Diff(want, listTar(t, out.Bytes())); diff != "" {
		t.Errorf("flattened umoci image (-want +got):\n%s", diff)
	}
	if want := (FlattenStats{Entries: 14, Files: 5, Dirs: 7, Symlinks: 2, Bytes: 18}); st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}

	// The same image through skopeo as a docker-archive flattens to the same bytes.
	lodetest.Require(t, lodetest.Tool("skopeo"))
	archive := filepath.Join(t.TempDir(), "img.tar")
	run(t, "", "skopeo", "copy", "--quiet", "oci:"+dir+":v2", "docker-archive:"+archive+":lode/test:v2")
	dim, err := Open(context.Background(), "docker-archive:"+archive+":lode/test:v2")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantCfg, dim.Config(), cmp.Comparer(func(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") })); diff != "" {
		t.Errorf("docker-archive Config (-want +got):\n%s", diff)
	}
	var dout bytes.Buffer
	if _, err := Flatten(context.Background(), dim, &dout, DefaultFlattenOptions()); err != nil {
		t.Fatalf("Flatten(docker-archive) = %v", err)
	}
	if !bytes.Equal(dout.Bytes(), out.Bytes()) {
		t.Errorf("docker-archive flattened differently:\n%s", cmp.Diff(listTar(t, out.Bytes()), listTar(t, dout.Bytes())))
	}
	// And without a tag, since the archive holds one image.
	if _, err := Open(context.Background(), "docker-archive:"+archive); err != nil {
		t.Errorf("Open(docker-archive without tag) = %v", err)
	}
}
