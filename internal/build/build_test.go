package build_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/oci"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
	"github.com/lode-dev/lode/internal/store/mem"
)

const tenant = "team-a"

// helperEnv makes the test binary run one build (described by the JSON in
// the variable) instead of the tests: the determinism test runs it with
// another TZ and umask.
const helperEnv = "LODE_BUILD_TEST_HELPER"

type helperJob struct {
	Store, Keyring, Source, Name, Keep string
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(helperBuild(spec))
	}
	os.Exit(m.Run())
}

func helperBuild(spec string) int {
	var j helperJob
	if err := json.Unmarshal([]byte(spec), &j); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	syscall.Umask(0o077)
	st, err := file.New(j.Store)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	kr, err := manifest.LoadFileKeyring(j.Keyring)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	res, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), build.Options{
		Source: j.Source, Tenant: tenant, Name: j.Name, KeepImage: j.Keep, TempDir: filepath.Dir(j.Keep),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// newKeyring writes a keyring with a key for tenant.
func newKeyring(t testing.TB) *manifest.FileKeyring {
	t.Helper()
	kr, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.AddTenant(tenant); err != nil {
		t.Fatal(err)
	}
	if err := kr.Save(); err != nil {
		t.Fatal(err)
	}
	return kr
}

func doBuild(t testing.TB, st store.Store, kr *manifest.FileKeyring, o build.Options) build.Result {
	t.Helper()
	if o.Tenant == "" {
		o.Tenant = tenant
	}
	if o.TempDir == "" {
		o.TempDir = t.TempDir()
	}
	res, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), o)
	if err != nil {
		t.Fatalf("Build(%s) = %v", o.Source, err)
	}
	return res
}

func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// umociImage is a two-layer OCI layout built by umoci, and the rootfs umoci
// unpacks from its top image (the oracle of the merged tree).
type umociImage struct {
	layout string // the layout directory; tags "v1" (base) and "v2" (base + changes)
	rootfs string // umoci unpack of v2
}

// newUmociImage builds the layout. Layer 1 (v1): regular files (one of
// 1.5 MiB), nested dirs, relative and absolute symlinks, a hard link, a
// user.* xattr, a setuid file, a fifo, a file owned by 1000:1000. Layer 2
// (v2): removes a file (umoci writes a whiteout), a directory and the
// original of a hard link, and adds files.
func newUmociImage(t *testing.T) umociImage {
	t.Helper()
	lodetest.Require(t, lodetest.Root, lodetest.Tool("umoci"))
	work := t.TempDir()
	run(t, work, "umoci", "init", "--layout", "L")
	run(t, work, "umoci", "new", "--image", "L:v0")
	run(t, work, "umoci", "config", "--image", "L:v0", "--config.entrypoint", "/bin/app",
		"--config.env", "A=1", "--config.workingdir", "/srv", "--config.user", "1000:1000")
	run(t, work, "umoci", "unpack", "--image", "L:v0", "B")
	root := filepath.Join(work, "B", "rootfs")
	put := func(p string, body []byte, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, body, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	put("etc/hostname", []byte("lode\n"), 0o644)
	put("etc/gone", []byte("deleted in layer 2\n"), 0o644)
	put("srv/big.bin", randBytes(1, 1536<<10), 0o644)
	put("srv/medium.bin", randBytes(2, 200<<10), 0o640)
	put("srv/owned", []byte("owned by 1000\n"), 0o600)
	put("usr/bin/su", []byte("#!/bin/sh\necho su\n"), 0o755|os.ModeSetuid)
	put("usr/bin/tool", []byte("#!/bin/sh\necho tool\n"), 0o755)
	put("var/old/a", []byte("a\n"), 0o644)
	put("deep/a/b/c/d/e/f", []byte("deep\n"), 0o444)
	for i := range 40 {
		put(fmt.Sprintf("usr/share/doc/f%02d", i), randBytes(int64(100+i), 100*i), 0o644)
	}
	if err := os.Chown(filepath.Join(root, "srv/owned"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{"usr/bin/tool", "usr/bin/tool-link"}, {"usr/bin/su", "usr/sbin/su-link"}} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, l[1])), 0o755)
		if err := os.Link(filepath.Join(root, l[0]), filepath.Join(root, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"usr/bin/rel": "tool", "usr/bin/abs": "/usr/bin/tool", "bin": "usr/bin"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, "srv/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "srv/fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(root, "etc/hostname"), "user.lode.test", []byte("xattr value"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	run(t, work, "umoci", "repack", "--refresh-bundle", "--image", "L:v1", "B")

	if err := os.Remove(filepath.Join(root, "etc/gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "var/old")); err != nil {
		t.Fatal(err)
	}
	// The original of a hard link goes; its link stays.
	if err := os.Remove(filepath.Join(root, "usr/bin/tool")); err != nil {
		t.Fatal(err)
	}
	put("etc/added", []byte("added in layer 2\n"), 0o644)
	put("srv/new.bin", randBytes(3, 300<<10), 0o644)
	run(t, work, "umoci", "repack", "--refresh-bundle", "--image", "L:v2", "B")

	run(t, work, "umoci", "unpack", "--image", "L:v2", "U")
	return umociImage{layout: filepath.Join(work, "L"), rootfs: filepath.Join(work, "U", "rootfs")}
}

// entry is what the comparison checks of one file.
// loopMount mounts an ext4 image read-only at a new directory until the
// test ends.
func loopMount(t *testing.T, image string) string {
	t.Helper()
	lodetest.Require(t, lodetest.Root, lodetest.Loop)
	dir := t.TempDir()
	run(t, "", "mount", "-t", "ext4", "-o", "ro,loop,noload", image, dir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

func TestUmociImageMountsAsMergedTree(t *testing.T) {
	img := newUmociImage(t)
	lodetest.Require(t, lodetest.Tool("e2fsck"), lodetest.Loop)
	kr := newKeyring(t)
	st := mem.New()
	keep := filepath.Join(t.TempDir(), "v2.ext4")
	res := doBuild(t, st, kr, build.Options{Source: "oci:" + img.layout + ":v2", Name: "app", KeepImage: keep})

	fi, err := os.Stat(keep)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != res.ImageSize || res.Chunks != int(chunk.Count(res.ImageSize, chunk.DefaultSize)) {
		t.Errorf("kept %d bytes; Result ImageSize %d, Chunks %d", fi.Size(), res.ImageSize, res.Chunks)
	}
	if want := []string{"/bin/app"}; !cmp.Equal(res.Config.Entrypoint, want) || res.Config.WorkingDir != "/srv" || res.Config.User != "1000:1000" {
		t.Errorf("Config = %+v, want entrypoint %v, workdir /srv, user 1000:1000", res.Config, want)
	}
	if out, err := exec.Command("e2fsck", "-fn", keep).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}

	want := lodetest.Snapshot(t, img.rootfs)
	got := lodetest.Snapshot(t, loopMount(t, keep))
	// Spot checks that the oracle has what the layers put there, so a
	// broken oracle cannot make the comparison vacuous.
	for p, check := range map[string]func(lodetest.TreeEntry) bool{
		"etc/gone":          nil,
		"var/old":           nil,
		"etc/added":         func(e lodetest.TreeEntry) bool { return e.Mode.IsRegular() },
		"srv/big.bin":       func(e lodetest.TreeEntry) bool { return e.Size == 1536<<10 },
		"srv/fifo":          func(e lodetest.TreeEntry) bool { return e.Mode&fs.ModeNamedPipe != 0 && e.Mode.Perm() == 0o620 },
		"srv/owned":         func(e lodetest.TreeEntry) bool { return e.UID == 1000 && e.GID == 1000 },
		"usr/bin/su":        func(e lodetest.TreeEntry) bool { return e.Mode&fs.ModeSetuid != 0 },
		"usr/bin/tool":      nil,
		"usr/bin/tool-link": func(e lodetest.TreeEntry) bool { return e.LinkGroupSize == 1 && e.Size > 0 },
		"usr/sbin/su-link": func(e lodetest.TreeEntry) bool {
			return e.LinkGroupSize == 2 && e.FirstLink == "usr/bin/su" && e.Mode&fs.ModeSetuid != 0
		},
		"usr/bin/abs":       func(e lodetest.TreeEntry) bool { return e.Target == "/usr/bin/tool" },
		"etc/hostname":      func(e lodetest.TreeEntry) bool { return e.Xattrs["user.lode.test"] == "xattr value" },
		"deep/a/b/c/d/e/f":  func(e lodetest.TreeEntry) bool { return e.Mode.Perm() == 0o444 },
		"usr/share/doc/f39": func(e lodetest.TreeEntry) bool { return e.Size == 3900 },
		"usr/bin/rel":       func(e lodetest.TreeEntry) bool { return e.Target == "tool" },
		"bin":               func(e lodetest.TreeEntry) bool { return e.Target == "usr/bin" },
		"usr/share/doc/f00": func(e lodetest.TreeEntry) bool { return e.Size == 0 },
		"srv/medium.bin":    func(e lodetest.TreeEntry) bool { return e.Mode.Perm() == 0o640 },
		"srv/new.bin":       func(e lodetest.TreeEntry) bool { return e.Size == 300<<10 },
		"usr/share/doc/f20": func(e lodetest.TreeEntry) bool { return e.Size == 2000 },
		"deep/a/b/c/d":      func(e lodetest.TreeEntry) bool { return e.Mode.IsDir() },
		"usr/share/doc":     func(e lodetest.TreeEntry) bool { return e.Mode.IsDir() },
	} {
		e, ok := want[p]
		if check == nil {
			if ok {
				t.Errorf("oracle has %s, which layer 2 deleted", p)
			}
			continue
		}
		if !ok || !check(e) {
			t.Errorf("oracle %s = %+v (present %v): not what the layers wrote", p, e, ok)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mounted image differs from umoci's unpacked rootfs (-umoci +lode):\n%s", diff)
	}
}

// TestDeterministicAcrossTZAndUmask builds the same source twice, the second
// time in a child process with TZ=Asia/Tokyo and umask 077, into one file
// store.
func TestDeterministicAcrossTZAndUmask(t *testing.T) {
	img := newUmociImage(t)
	kr := newKeyring(t)
	dir := t.TempDir()
	st, err := file.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	keep1 := filepath.Join(dir, "one.ext4")
	src := "oci:" + img.layout + ":v2"
	r1 := doBuild(t, st, kr, build.Options{Source: src, Name: "one", KeepImage: keep1})
	if r1.New == 0 || r1.New+r1.Dedup+r1.Holes != r1.Chunks {
		t.Errorf("first build: New %d, Dedup %d, Holes %d, Chunks %d: want New > 0 and New+Dedup+Holes = Chunks", r1.New, r1.Dedup, r1.Holes, r1.Chunks)
	}

	keep2 := filepath.Join(dir, "two.ext4")
	spec, _ := json.Marshal(helperJob{Store: st.Dir(), Keyring: kr.Path(), Source: src, Name: "two", Keep: keep2})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec), "TZ=Asia/Tokyo")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("second build in a child (TZ=Asia/Tokyo, umask 077): %v\n%s", err, stderr.Bytes())
	}
	var r2 build.Result
	if err := json.Unmarshal(out, &r2); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	if r2.New != 0 || r2.NewBytes != 0 {
		t.Errorf("second build of the same source uploaded %d chunks (%d bytes), want 0", r2.New, r2.NewBytes)
	}
	if r2.Root != r1.Root || r2.SourceDigest != r1.SourceDigest || r2.ImageSize != r1.ImageSize {
		t.Errorf("second build: root %s, source %s, size %d; first: %s, %s, %d", r2.Root, r2.SourceDigest, r2.ImageSize, r1.Root, r1.SourceDigest, r1.ImageSize)
	}
	b1, err := os.ReadFile(keep1)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := os.ReadFile(keep2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1, b2) {
		t.Errorf("the two builds' ext4 images differ (sha256 %x vs %x)", sha256.Sum256(b1), sha256.Sum256(b2))
	}
	m1, m2 := publicManifest(t, st, tenant, "one"), publicManifest(t, st, tenant, "two")
	if !cmp.Equal(m1.Names, m2.Names) {
		t.Errorf("chunk names differ between the two builds")
	}
	if m1.SourceDigest != m2.SourceDigest || m1.ImageSize != m2.ImageSize {
		t.Errorf("manifests: %s/%d vs %s/%d", m1.SourceDigest, m1.ImageSize, m2.SourceDigest, m2.ImageSize)
	}
}

// publicManifest reads the public part of tenant's image name.
func publicManifest(t testing.TB, st store.Store, tenant, name string) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	p, err := catalog.Lookup(ctx, st, tenant, name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Get(ctx, store.ManifestKey(p.Root, p.Manifest), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.ReadPublic(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDockerArchiveBuildsSameImage(t *testing.T) {
	img := newUmociImage(t)
	lodetest.Require(t, lodetest.Tool("skopeo"))
	archive := filepath.Join(t.TempDir(), "img.tar")
	run(t, "", "skopeo", "copy", "--quiet", "oci:"+img.layout+":v2", "docker-archive:"+archive+":lode/app:v2")
	kr := newKeyring(t)
	st := mem.New()
	dir := t.TempDir()
	fromOCI, fromArchive := filepath.Join(dir, "oci.ext4"), filepath.Join(dir, "archive.ext4")
	r1 := doBuild(t, st, kr, build.Options{Source: "oci:" + img.layout + ":v2", Name: "oci", KeepImage: fromOCI})
	r2 := doBuild(t, st, kr, build.Options{Source: "docker-archive:" + archive + ":lode/app:v2", Name: "archive", KeepImage: fromArchive})
	a, _ := os.ReadFile(fromOCI)
	b, _ := os.ReadFile(fromArchive)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("docker-archive built %d bytes (sha256 %x), OCI layout %d bytes (sha256 %x): want identical", len(b), sha256.Sum256(b), len(a), sha256.Sum256(a))
	}
	if r2.New != 0 {
		t.Errorf("the docker-archive build uploaded %d new chunks, want 0 (same image as the OCI build)", r2.New)
	}
	if !cmp.Equal(r1.Config, r2.Config) {
		t.Errorf("configs differ: %s", cmp.Diff(r1.Config, r2.Config))
	}
}

// TestAppendedLayerDedups builds a realistic base (a few MB of files) and
// the same image with one more layer; the second shares almost every chunk.
func TestAppendedLayerDedups(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.Tool("umoci"))
	work := t.TempDir()
	run(t, work, "umoci", "init", "--layout", "L")
	run(t, work, "umoci", "new", "--image", "L:base")
	run(t, work, "umoci", "unpack", "--image", "L:base", "B")
	root := filepath.Join(work, "B", "rootfs")
	rng := rand.New(rand.NewSource(7))
	for i := range 600 {
		p := filepath.Join(root, "usr", "lib", fmt.Sprintf("pkg%02d", i%20), fmt.Sprintf("file%03d.so", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		b := make([]byte, 4096+rng.Intn(96<<10))
		rng.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(t, work, "umoci", "repack", "--refresh-bundle", "--image", "L:base", "B")
	if err := os.WriteFile(filepath.Join(root, "app.py"), []byte("print('hi')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "weights.bin"), randBytes(9, 300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, work, "umoci", "repack", "--refresh-bundle", "--image", "L:app", "B")

	kr := newKeyring(t)
	st := mem.New()
	base := doBuild(t, st, kr, build.Options{Source: "oci:" + filepath.Join(work, "L") + ":base", Name: "base"})
	app := doBuild(t, st, kr, build.Options{Source: "oci:" + filepath.Join(work, "L") + ":app", Name: "app"})
	if base.InputBytes < 4<<20 {
		t.Fatalf("base image has %d bytes of files, want a few MB", base.InputBytes)
	}
	mb, ma := publicManifest(t, st, tenant, "base"), publicManifest(t, st, tenant, "app")
	inApp := map[chunk.Name]bool{}
	for _, n := range ma.Names {
		inApp[n] = true
	}
	var baseData, shared int
	for _, n := range mb.Names {
		if n.IsZero() {
			continue
		}
		baseData++
		if inApp[n] {
			shared++
		}
	}
	var missing []int
	for i, n := range mb.Names {
		if !n.IsZero() && !inApp[n] {
			missing = append(missing, i)
		}
	}
	t.Logf("base chunks not in base+layer: %v of %d", missing, len(mb.Names))
	share := float64(shared) / float64(baseData)
	t.Logf("base: %d data chunks, %d shared with base+layer (%.1f%%); app build: %d new, %d dedup, %.1f%% shared",
		baseData, shared, 100*share, app.New, app.Dedup, 100*app.SharedShare())
	if share < 0.95 {
		t.Errorf("base+layer shares %d of the base's %d data chunks (%.1f%%), want ≥ 95%%", shared, baseData, 100*share)
	}
	if app.Dedup < shared {
		t.Errorf("app build counted %d deduplicated chunks, want ≥ %d (the shared base chunks)", app.Dedup, shared)
	}
	if app.New == 0 {
		t.Errorf("app build uploaded nothing, but it added %d bytes of new content", 300<<10)
	}
}

// tarEntry is one entry of a rootfs tar written by writeTar.
type tarEntry struct {
	h    tar.Header
	body string
}

func writeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.h
		h.Size = int64(len(e.body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("writing %q: %v", h.Name, err)
		}
		io.WriteString(tw, e.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gzipBytes(t *testing.T, b []byte, level int) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, level)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// objects returns every key of st with its bytes.
func objects(t *testing.T, st store.Store) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	out := map[string][]byte{}
	err := st.List(ctx, "", func(key string, _ int64) error {
		b, err := st.Get(ctx, key, nil)
		out[key] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tamperedLayout returns a copy of the umoci layout whose top layer blob
// is replaced by the same tar compressed differently: valid gzip, valid
// tar, but not the bytes the manifest's digest names.
func tamperedLayout(t *testing.T, img umociImage) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "L")
	run(t, "", "cp", "-a", img.layout, dir)
	idx := readJSON(t, filepath.Join(dir, "index.json"))
	var mdesc string
	for _, m := range idx["manifests"].([]any) {
		m := m.(map[string]any)
		if m["annotations"].(map[string]any)["org.opencontainers.image.ref.name"] == "v2" {
			mdesc = m["digest"].(string)
		}
	}
	man := readJSON(t, blobPath(dir, mdesc))
	layers := man["layers"].([]any)
	top := layers[len(layers)-1].(map[string]any)["digest"].(string)
	p := blobPath(dir, top)
	gz, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	again := gzipBytes(t, raw, gzip.BestSpeed)
	if bytes.Equal(again, gz) {
		t.Fatal("recompressing the layer gave the same bytes")
	}
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, again, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, top
}

func readJSON(t *testing.T, p string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func blobPath(layout, digest string) string {
	alg, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(layout, "blobs", alg, hex)
}

// TestBadInput builds sources that must be refused and checks the error
// names the entry and that the store keeps everything it had: no manifest,
// no pointer, the earlier image still readable.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFile := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return "rootfs:" + p
	}
	good := writeTar(t, []tarEntry{
		{h: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
		{h: tar.Header{Typeflag: tar.TypeReg, Name: "etc/hello"}, body: "hello\n"},
		{h: tar.Header{Typeflag: tar.TypeReg, Name: "data.bin"}, body: string(randBytes(5, 1<<20))},
	})
	bigFile := tarEntry{h: tar.Header{Typeflag: tar.TypeReg, Name: "usr/big"}, body: string(randBytes(6, 700<<10))}
	truncated := writeTar(t, []tarEntry{bigFile, {h: tar.Header{Typeflag: tar.TypeReg, Name: "z"}, body: "z"}})
	truncated = truncated[:600<<10]
	corruptGz := gzipBytes(t, writeTar(t, []tarEntry{bigFile}), gzip.DefaultCompression)
	corruptGz[len(corruptGz)/2] ^= 0xff

	type tc struct {
		name     string
		source   string
		sentinel error
		want     []string // substrings of the error
	}
	tcs := []tc{
		{"traversal", writeFile("traversal.tar", writeTar(t, []tarEntry{
			{h: tar.Header{Typeflag: tar.TypeReg, Name: "ok"}, body: "ok"},
			{h: tar.Header{Typeflag: tar.TypeReg, Name: "a/../../evil"}, body: "x"},
		})), oci.ErrUnsafeEntry, []string{`"a/../../evil"`, "escapes"}},
		{"absolute path", writeFile("absolute.tar", writeTar(t, []tarEntry{
			{h: tar.Header{Typeflag: tar.TypeReg, Name: "/etc/shadow"}, body: "x"},
		})), oci.ErrUnsafeEntry, []string{`"/etc/shadow"`, "absolute"}},
		{"escaping symlink", writeFile("symlink.tar", writeTar(t, []tarEntry{
			{h: tar.Header{Typeflag: tar.TypeDir, Name: "a/", Mode: 0o755}},
			{h: tar.Header{Typeflag: tar.TypeSymlink, Name: "a/link", Linkname: "../../etc/passwd", Mode: 0o777}},
		})), oci.ErrUnsafeEntry, []string{`"a/link"`, "../../etc/passwd", "escapes"}},
		{"hard link to missing target", writeFile("hardlink.tar", writeTar(t, []tarEntry{
			{h: tar.Header{Typeflag: tar.TypeLink, Name: "b", Linkname: "missing"}},
		})), oci.ErrUnsafeEntry, []string{`"b"`, "missing"}},
		{"device node outside /dev", writeFile("device.tar", writeTar(t, []tarEntry{
			{h: tar.Header{Typeflag: tar.TypeChar, Name: "srv/sda", Devmajor: 8, Devminor: 0, Mode: 0o660}},
		})), oci.ErrUnsafeEntry, []string{`"srv/sda"`, "device", "--allow-devices"}},
		{"unsupported type", writeFile("type.tar", writeTar(t, []tarEntry{
			{h: tar.Header{Typeflag: 'Z', Name: "weird"}},
		})), oci.ErrUnsupported, []string{`"weird"`, "type"}},
		{"truncated tar", writeFile("truncated.tar", truncated), oci.ErrCorrupt, []string{`"usr/big"`}},
		{"corrupt gzip", writeFile("corrupt.tar.gz", corruptGz), oci.ErrCorrupt, []string{"layer 0"}},
		{"missing file", "rootfs:" + filepath.Join(dir, "nope.tar"), nil, []string{"nope.tar"}},
	}
	if lodetest.Root() == nil && lodetest.Tool("umoci")() == nil {
		img := newUmociImage(t)
		layout, digest := tamperedLayout(t, img)
		hex := strings.TrimPrefix(digest, "sha256:")
		tcs = append(tcs, tc{"layer blob with a wrong digest", "oci:" + layout + ":v2", oci.ErrCorrupt, []string{"layer 1", hex[:12], "digest mismatch"}})
	} else if lodetest.NoSkip() {
		t.Fatal("LODE_TEST_NO_SKIP=1 but the tampered-layout case needs root and umoci")
	}

	kr := newKeyring(t)
	st := mem.New()
	doBuild(t, st, kr, build.Options{Source: writeFile("good.tar", good), Name: "good"})
	goodManifest, goodPtr, err := catalog.Resolve(ctx, st, kr, tenant, "good")
	if err != nil {
		t.Fatal(err)
	}
	before := objects(t, st)

	for _, c := range tcs {
		t.Run(c.name, func(t *testing.T) {
			// Building over the existing image's name must not touch it either.
			if _, err := build.Build(ctx, st, kr, kr.StoreSecret(), build.Options{Source: c.source, Tenant: tenant, Name: "good", TempDir: t.TempDir()}); err == nil {
				t.Errorf("Build(%s) as \"good\" succeeded, want an error", c.name)
			}
			_, err := build.Build(ctx, st, kr, kr.StoreSecret(), build.Options{Source: c.source, Tenant: tenant, Name: "bad", TempDir: t.TempDir()})
			if err == nil {
				t.Fatalf("Build(%s) succeeded, want an error", c.name)
			}
			if c.sentinel != nil && !errors.Is(err, c.sentinel) {
				t.Errorf("Build error = %v, want errors.Is %v", err, c.sentinel)
			}
			var ee *oci.EntryError
			if c.sentinel != nil && !errors.As(err, &ee) {
				t.Errorf("Build error = %v, want an *oci.EntryError", err)
			}
			for _, s := range c.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Build error = %q, want it to mention %q", err, s)
				}
			}
			after := objects(t, st)
			for k, b := range before {
				if !bytes.Equal(after[k], b) {
					t.Errorf("object %s changed or vanished after the failed build", k)
				}
			}
			for k := range after {
				if _, ok := before[k]; !ok && !strings.Contains(k, "/chunks/") {
					t.Errorf("the failed build left object %s", k)
				}
			}
			if _, err := catalog.Lookup(ctx, st, tenant, "bad"); !errors.Is(err, catalog.ErrNoImage) {
				t.Errorf("Lookup(bad) after the failed build = %v, want ErrNoImage", err)
			}
			m, p, err := catalog.Resolve(ctx, st, kr, tenant, "good")
			if err != nil {
				t.Fatalf("the earlier image no longer resolves: %v", err)
			}
			if p != goodPtr || !cmp.Equal(m.Names, goodManifest.Names) {
				t.Errorf("the earlier image's pointer or manifest changed")
			}
			for i := range m.Names {
				if m.Names[i].IsZero() {
					continue
				}
				ct, err := st.Get(ctx, store.ChunkKey(p.Root, m.Names[i]), nil)
				if err != nil {
					t.Fatalf("chunk %d of the earlier image: %v", i, err)
				}
				if _, err := chunk.Open(m.Ref(i), ct, nil); err != nil {
					t.Errorf("chunk %d of the earlier image no longer opens: %v", i, err)
				}
			}
		})
	}
}

// failingStore fails writes of keys that contain substring, after the
// first okWrites of them.
type failingStore struct {
	store.Store
	substring string
	okWrites  atomic.Int64
}

var errInjected = errors.New("injected store failure")

func (f *failingStore) fail(key string) error {
	if strings.Contains(key, f.substring) && f.okWrites.Add(-1) < 0 {
		return fmt.Errorf("putting %s: %w", key, errInjected)
	}
	return nil
}

func (f *failingStore) Put(ctx context.Context, key string, b []byte) error {
	if err := f.fail(key); err != nil {
		return err
	}
	return f.Store.Put(ctx, key, b)
}

func (f *failingStore) PutIfAbsent(ctx context.Context, key string, b []byte) error {
	if err := f.fail(key); err != nil {
		return err
	}
	return f.Store.PutIfAbsent(ctx, key, b)
}

// cancelOnUpload cancels the build when its upload phase starts.
type cancelOnUpload struct{ cancel context.CancelFunc }

func (c cancelOnUpload) Phase(name string, _ int64) {
	if name == "upload" {
		c.cancel()
	}
}
func (cancelOnUpload) Add(int64) {}

// TestFailureAfterChunksLeavesNoManifest fails builds after the flatten:
// a chunk upload, the pointer write, a cancel. None leaves a manifest or a
// pointer; the store's earlier objects are untouched.
func TestFailureAfterChunksLeavesNoManifest(t *testing.T) {
	kr := newKeyring(t)
	src := "rootfs:" + rootfsTar(t, 6<<20)
	for _, c := range []struct {
		name      string
		substring string
		okWrites  int64
		cancel    bool
		want      error
	}{
		{name: "chunk upload fails", substring: "/chunks/", okWrites: 3, want: errInjected},
		{name: "pointer write fails", substring: "images/", want: errInjected},
		{name: "cancelled during upload", cancel: true, want: context.Canceled},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			base := mem.New()
			doBuild(t, base, kr, build.Options{Source: "rootfs:" + rootfsTar(t, 1<<20), Name: "earlier"})
			before := objects(t, base)
			st := &failingStore{Store: base, substring: "never"}
			if c.substring != "" {
				st.substring = c.substring
				st.okWrites.Store(c.okWrites)
			}
			o := build.Options{Source: src, Tenant: tenant, Name: "failed", TempDir: t.TempDir(), Uploads: 2}
			if c.cancel {
				o.Progress = cancelOnUpload{cancel}
			}
			_, err := build.Build(ctx, st, kr, kr.StoreSecret(), o)
			if !errors.Is(err, c.want) {
				t.Fatalf("Build = %v, want %v", err, c.want)
			}
			after := objects(t, base)
			for k, b := range before {
				if !bytes.Equal(after[k], b) {
					t.Errorf("object %s changed or vanished", k)
				}
			}
			for k := range after {
				if _, ok := before[k]; !ok && !strings.Contains(k, "/chunks/") {
					t.Errorf("the failed build left object %s", k)
				}
			}
			if _, err := catalog.Lookup(context.Background(), base, tenant, "failed"); !errors.Is(err, catalog.ErrNoImage) {
				t.Errorf("Lookup(failed) = %v, want ErrNoImage", err)
			}
		})
	}
}

func TestMissingTenantKeyFailsBeforeWork(t *testing.T) {
	kr := newKeyring(t)
	st := mem.New()
	// The source does not exist: the key check must come first.
	_, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), build.Options{
		Source: "rootfs:" + filepath.Join(t.TempDir(), "never-read.tar"), Tenant: "nobody", Name: "x",
	})
	if !errors.Is(err, manifest.ErrNoKey) || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("Build with a tenant that has no key = %v, want ErrNoKey naming the tenant", err)
	}
	if objs := objects(t, st); len(objs) != 0 {
		t.Errorf("the store has %d objects after the refused build, want 0", len(objs))
	}
}

func TestInvalidNames(t *testing.T) {
	kr := newKeyring(t)
	for _, o := range []build.Options{
		{Source: "rootfs:/x", Tenant: tenant, Name: "../up"},
		{Source: "rootfs:/x", Tenant: "a/b", Name: "ok"},
		{Source: "rootfs:/x", Tenant: tenant, Name: ""},
	} {
		if _, err := build.Build(context.Background(), mem.New(), kr, kr.StoreSecret(), o); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("Build(tenant %q, name %q) = %v, want ErrInvalidKey", o.Tenant, o.Name, err)
		}
	}
}

// rootfsTar writes a tar of about size bytes: many small and mid-sized
// files of pseudo-random content, like a real userland.
func rootfsTar(tb testing.TB, size int) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "rootfs.tar")
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	tw := tar.NewWriter(f)
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 1<<20)
	written := 0
	for i := 0; written < size; i++ {
		if i%50 == 0 {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%03d/", i/50), Mode: 0o755, ModTime: time.Unix(1, 0)})
		}
		n := 512 + rng.Intn(len(buf)/4)
		if i%37 == 0 {
			n = len(buf)
		}
		rng.Read(buf[:n])
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%03d/f%05d", i/50, i), Mode: 0o644, Size: int64(n), ModTime: time.Unix(1, 0)}); err != nil {
			tb.Fatal(err)
		}
		tw.Write(buf[:n])
		written += n
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkBuild builds a 64 MiB rootfs: into a store without a root
// (chunks sealed after the flatten), into one with a root (sealed while the
// image is written), and into a file store with a root (one batch, one
// sync), raw and zstd.
func BenchmarkBuild(b *testing.B) {
	const size = 64 << 20
	src := "rootfs:" + rootfsTar(b, size)
	kr := newKeyring(b)
	tmp := b.TempDir()
	for _, bc := range []struct {
		name  string
		store func(b *testing.B) store.Store
		comp  uint8
	}{
		{"mem-fresh", func(*testing.B) store.Store { return mem.New() }, manifest.CompressionNone},
		{"mem-root", memWithRoot, manifest.CompressionNone},
		{"file-root", fileWithRoot, manifest.CompressionNone},
		{"file-root-zstd", fileWithRoot, manifest.CompressionZstd},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				st := bc.store(b)
				b.StartTimer()
				if _, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), build.Options{Source: src, Tenant: tenant, Name: "bench", TempDir: tmp, Compression: bc.comp}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func memWithRoot(b *testing.B) store.Store {
	st := mem.New()
	if _, err := store.CreateRoot(context.Background(), st, 1, time.Now()); err != nil {
		b.Fatal(err)
	}
	return st
}

func fileWithRoot(b *testing.B) store.Store {
	st, err := file.New(filepath.Join(b.TempDir(), "store"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := store.CreateRoot(context.Background(), st, 1, time.Now()); err != nil {
		b.Fatal(err)
	}
	return st
}

// onUpload runs f when the build's upload phase starts (after it resolved
// its root, before it writes the manifest and the pointer).
type onUpload func()

func (f onUpload) Phase(name string, _ int64) {
	if name == "upload" {
		f()
	}
}
func (onUpload) Add(int64) {}

// TestCommitCheck: a build that runs past its timeout, or whose root stops
// being active while it runs, writes no pointer and leaves no manifest; the
// error names the cause and the flag.
func TestCommitCheck(t *testing.T) {
	kr := newKeyring(t)
	src := "rootfs:" + rootfsTar(t, 1<<20)
	for _, c := range []struct {
		name   string
		during func(st store.Store, clock *time.Time)
		want   error
		text   string
	}{
		{name: "within the timeout", during: func(store.Store, *time.Time) {}},
		{name: "just under the timeout", during: func(_ store.Store, clock *time.Time) { *clock = clock.Add(time.Hour) }},
		{name: "past the timeout", during: func(_ store.Store, clock *time.Time) { *clock = clock.Add(time.Hour + time.Second) },
			want: build.ErrDeadline, text: "--build-timeout 1h0m0s"},
		{name: "root retired", want: build.ErrRootNotActive, text: "retired", during: func(st store.Store, clock *time.Time) {
			roots, err := store.Roots(context.Background(), st)
			if err != nil || len(roots) != 1 {
				t.Fatalf("Roots = %v, %v", roots, err)
			}
			if err := store.WriteRoot(context.Background(), st, store.RootInfo{ID: roots[0].ID, State: store.RootRetired, Since: *clock}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := mem.New()
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			o := build.Options{Source: src, Tenant: tenant, Name: "img", TempDir: t.TempDir(), Timeout: time.Hour,
				Now:      func() time.Time { return clock },
				Progress: onUpload(func() { c.during(st, &clock) })}
			_, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), o)
			_, lerr := catalog.Lookup(context.Background(), st, tenant, "img")
			if c.want == nil {
				if err != nil || lerr != nil {
					t.Fatalf("Build = %v, Lookup = %v; want success", err, lerr)
				}
				return
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) || !strings.Contains(err.Error(), "no pointer written") {
				t.Fatalf("Build = %v, want %v naming %q", err, c.want, c.text)
			}
			if !errors.Is(lerr, catalog.ErrNoImage) {
				t.Errorf("Lookup after the aborted build = %v, want ErrNoImage", lerr)
			}
			for k := range objects(t, st) {
				if strings.Contains(k, "/manifests/") {
					t.Errorf("the aborted build left manifest %s", k)
				}
			}
		})
	}
}
