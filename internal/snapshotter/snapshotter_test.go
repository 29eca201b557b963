package snapshotter

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/lodetest"
)

// fakeImages knows lode images by source manifest digest and by chain ID.
type fakeImages struct {
	bySource map[digest.Digest]Image
	byChain  map[digest.Digest]Image
}

func (f *fakeImages) BySource(_ context.Context, d digest.Digest) (Image, error) {
	if im, ok := f.bySource[d]; ok {
		return im, nil
	}
	return Image{}, ErrUnknownImage
}

func (f *fakeImages) ByChainID(_ context.Context, d digest.Digest) (Image, error) {
	if im, ok := f.byChain[d]; ok {
		return im, nil
	}
	return Image{}, ErrUnknownImage
}

// bindMounter stands in for the worker: it bind-mounts (read-only) a
// directory tree per image, really mounted, as the worker's loop mount is.
type bindMounter struct {
	trees map[string]string // image name → tree
	mu    sync.Mutex
	mnt   map[string]string // dir → image name
	calls []string
}

func (b *bindMounter) MountImage(_ context.Context, im Image, dir string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, "mount "+im.String())
	src, ok := b.trees[im.Name]
	if !ok {
		return errors.New("no such image")
	}
	if err := unix.Mount(src, dir, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(dir, 0)
		return err
	}
	b.mnt[dir] = im.Name
	return nil
}

func (b *bindMounter) Unmount(_ context.Context, dir string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, "unmount "+b.mnt[dir])
	delete(b.mnt, dir)
	return unix.Unmount(dir, 0)
}

// fakeLayers serves layer blobs by digest and counts the fetches.
type fakeLayers struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte
	fetched []digest.Digest
}

func (f *fakeLayers) Open(_ context.Context, ref string, d digest.Digest) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[d]
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	f.fetched = append(f.fetched, d)
	return io.NopCloser(bytes.NewReader(b)), nil
}

// layer is a gzipped tar of files (name → content; content "" with a
// trailing "/" name is a directory; ".wh." names are whiteouts).
func layer(t *testing.T, files map[string]string) ([]byte, digest.Digest) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		h := &tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}
		if strings.HasSuffix(n, "/") {
			h = &tar.Header{Name: n, Mode: 0o755, Typeflag: tar.TypeDir}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, files[n])
	}
	tw.Close()
	zw.Close()
	return buf.Bytes(), digest.FromBytes(buf.Bytes())
}

type env struct {
	t      *testing.T
	ctx    context.Context
	root   string
	sn     *Snapshotter
	images *fakeImages
	mnt    *bindMounter
	layers *fakeLayers
	reg    *prometheus.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	lodetest.Require(t, lodetest.Root)
	e := &env{
		t: t, ctx: namespaces.WithNamespace(context.Background(), "test"), root: t.TempDir(),
		images: &fakeImages{bySource: map[digest.Digest]Image{}, byChain: map[digest.Digest]Image{}},
		mnt:    &bindMounter{trees: map[string]string{}, mnt: map[string]string{}},
		layers: &fakeLayers{blobs: map[digest.Digest][]byte{}},
		reg:    prometheus.NewRegistry(),
	}
	sn, err := New(e.ctx, Config{Root: e.root, Images: e.images, Mounter: e.mnt, Layers: e.layers, Registerer: e.reg})
	if err != nil {
		t.Fatal(err)
	}
	e.sn = sn
	t.Cleanup(func() {
		sn.Close()
		for dir := range e.mnt.mnt {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return e
}

// lodeImage registers a lode image built from manifest md whose flattened
// tree holds files.
func (e *env) lodeImage(name string, md digest.Digest, files map[string]string) Image {
	tree := e.t.TempDir()
	for n, c := range files {
		p := filepath.Join(tree, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
	im := Image{Tenant: "default", Name: name, Source: md}
	e.images.bySource[md] = im
	e.mnt.trees[name] = tree
	return im
}

// img is a containerd image: its manifest digest and layers.
type img struct {
	ref      string
	manifest digest.Digest
	layers   [][]byte
	digests  []digest.Digest
	chains   []string
}

func (e *env) image(ref string, layers ...map[string]string) img {
	im := img{ref: ref, manifest: digest.FromString(ref)}
	chain := ""
	for _, files := range layers {
		b, d := layer(e.t, files)
		e.layers.blobs[d] = b
		im.layers, im.digests = append(im.layers, b), append(im.digests, d)
		chain = digest.FromString(chain + d.String()).String()
		im.chains = append(im.chains, chain)
	}
	return im
}

func labelsFor(im img, i int) map[string]string {
	var ls []string
	for _, d := range im.digests[i:] {
		ls = append(ls, d.String())
	}
	return map[string]string{
		LabelTargetRef: im.chains[i], LabelImageRef: im.ref, LabelManifestDigest: im.manifest.String(),
		LabelLayerDigest: im.digests[i].String(), LabelImageLayers: strings.Join(ls, ","),
	}
}

// pull does what containerd's unpacker does for each layer: skip a chain
// that exists, else Prepare with the labels; on ErrAlreadyExists the chain
// must exist; otherwise apply the layer and commit. It returns the layers
// it applied.
func (e *env) pull(im img) (applied int) {
	e.t.Helper()
	parent := ""
	for i := range im.layers {
		chain := im.chains[i]
		if _, err := e.sn.Stat(e.ctx, chain); err == nil {
			parent = chain
			continue
		}
		key := "extract-" + chain
		ms, err := e.sn.Prepare(e.ctx, key, parent, snapshots.WithLabels(labelsFor(im, i)))
		if errdefs.IsAlreadyExists(err) {
			if _, err := e.sn.Stat(e.ctx, chain); err != nil {
				e.t.Fatalf("Prepare(%s) = AlreadyExists, then Stat = %v", chain, err)
			}
			parent = chain
			continue
		}
		if err != nil {
			e.t.Fatalf("Prepare(layer %d of %s): %v", i, im.ref, err)
		}
		if err := mount.WithTempMount(e.ctx, ms, func(root string) error {
			dr, err := compression.DecompressStream(bytes.NewReader(im.layers[i]))
			if err != nil {
				return err
			}
			_, err = archive.Apply(e.ctx, root, dr)
			return err
		}); err != nil {
			e.t.Fatalf("applying layer %d of %s: %v", i, im.ref, err)
		}
		if err := e.sn.Commit(e.ctx, chain, key); err != nil {
			e.t.Fatal(err)
		}
		applied++
		parent = chain
	}
	return applied
}

// container prepares a writable snapshot on im's top chain, mounts it and
// calls fn with its root.
func (e *env) container(key string, im img, fn func(root string)) {
	e.t.Helper()
	ms, err := e.sn.Prepare(e.ctx, key, im.chains[len(im.chains)-1])
	if err != nil {
		e.t.Fatalf("Prepare(container on %s): %v", im.ref, err)
	}
	dir := e.t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		e.t.Fatalf("mounting %+v: %v", ms, err)
	}
	defer mount.UnmountAll(dir, 0)
	fn(dir)
}

func readTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = string(b)
		return nil
	})
	return out
}

func (e *env) kinds() map[string]string {
	st, err := e.sn.Status(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range st {
		out[s.Name] = s.Kind
	}
	return out
}

func TestRemotePullAndOverlay(t *testing.T) {
	e := newEnv(t)
	app := e.image("registry.test/app:1", map[string]string{"etc/base": "base"}, map[string]string{"app/bin": "app"})
	e.lodeImage("app", app.manifest, map[string]string{"etc/base": "base", "app/bin": "app", "app/old": "old"})

	if n := e.pull(app); n != 0 {
		t.Fatalf("pull applied %d layers, want 0 (remote snapshots)", n)
	}
	if got := len(e.layers.fetched); got != 0 {
		t.Errorf("fetched %d blobs, want 0", got)
	}
	want := map[string]string{app.chains[0]: KindRemoteLower, app.chains[1]: KindRemote}
	if diff := cmp.Diff(want, e.kinds()); diff != "" {
		t.Errorf("kinds (-want +got):\n%s", diff)
	}
	// Two containers share one mount; writes, deletes and renames go to
	// each container's upper directory.
	for _, key := range []string{"c1", "c2"} {
		e.container(key, app, func(root string) {
			if got := readTree(t, root); !cmp.Equal(got, map[string]string{"etc/base": "base", "app/bin": "app", "app/old": "old"}) {
				t.Errorf("container %s sees %v", key, got)
			}
			os.WriteFile(filepath.Join(root, "new"), []byte(key), 0o644)
			os.Remove(filepath.Join(root, "app/old"))
			if err := os.Rename(filepath.Join(root, "app/bin"), filepath.Join(root, "app/bin2")); err != nil {
				t.Errorf("rename in container %s: %v", key, err)
			}
			want := map[string]string{"etc/base": "base", "app/bin2": "app", "new": key}
			if got := readTree(t, root); !cmp.Equal(got, want) {
				t.Errorf("container %s after writes sees %v, want %v", key, got, want)
			}
		})
	}
	if got := readTree(t, e.mnt.trees["app"]); len(got) != 3 || got["app/old"] != "old" {
		t.Errorf("the lode image changed under the containers: %v", got)
	}
	if got := testutil.ToFloat64(e.sn.remote.WithLabelValues(KindRemote)); got != 1 {
		t.Errorf("remote top snapshots = %v, want 1", got)
	}
	// Removal, as containerd's GC does it: children first, then Cleanup.
	for _, k := range []string{"c1", "c2", app.chains[1], app.chains[0]} {
		if err := e.sn.Remove(e.ctx, k); err != nil {
			t.Fatalf("Remove(%s): %v", k, err)
		}
	}
	if err := e.sn.Cleanup(e.ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"mount default/app", "unmount app"}, e.mnt.calls); diff != "" {
		t.Errorf("mounter calls (-want +got):\n%s", diff)
	}
	for _, d := range []string{"snapshots", "mounts"} {
		if ents, _ := os.ReadDir(filepath.Join(e.root, d)); len(ents) != 0 {
			t.Errorf("%s not empty after removal: %v", d, ents)
		}
	}
}

func TestFallbackUnknownImage(t *testing.T) {
	e := newEnv(t)
	other := e.image("registry.test/other:1", map[string]string{"a": "1"}, map[string]string{"b": "2", ".wh.a": ""})
	if n := e.pull(other); n != 2 {
		t.Fatalf("pull applied %d layers, want 2 (fallback)", n)
	}
	e.container("c", other, func(root string) {
		if got := readTree(t, root); !cmp.Equal(got, map[string]string{"b": "2"}) {
			t.Errorf("container sees %v", got)
		}
	})
	if got := testutil.ToFloat64(e.sn.fallback.WithLabelValues("unknown_image")); got != 1 {
		t.Errorf("fallback{unknown_image} = %v, want 1", got)
	}
	if diff := cmp.Diff(map[string]string{other.chains[0]: KindLocal, other.chains[1]: KindLocal, "c": KindLocal}, e.kinds()); diff != "" {
		t.Errorf("kinds (-want +got):\n%s", diff)
	}
	// A client that sends no image labels (plain ctr pull): a lode image is
	// not recognized either; each layer falls back and is counted.
	app := e.image("registry.test/nolabels:1", map[string]string{"x": "1"})
	e.lodeImage("nolabels", app.manifest, map[string]string{"x": "1"})
	if _, err := e.sn.Prepare(e.ctx, "extract-nl", "", snapshots.WithLabels(map[string]string{LabelTargetRef: app.chains[0]})); err != nil {
		t.Fatalf("Prepare without image labels: %v", err)
	}
	if got := testutil.ToFloat64(e.sn.fallback.WithLabelValues("no_labels")); got != 1 {
		t.Errorf("fallback{no_labels} = %v, want 1", got)
	}
}

// TestSharedBase pulls two images with the same base layer, one built by
// lode, in both orders; the unknown one builds on a chain lode answered
// remotely in the first order, which must then be materialized.
func TestSharedBase(t *testing.T) {
	for _, lodeFirst := range []bool{true, false} {
		t.Run(map[bool]string{true: "lode-first", false: "unknown-first"}[lodeFirst], func(t *testing.T) {
			e := newEnv(t)
			base := map[string]string{"etc/os": "debian", "etc/gone": "x"}
			known := e.image("registry.test/known:1", base, map[string]string{"known": "k"})
			unknown := e.image("registry.test/unknown:1", base, map[string]string{"unknown": "u", "etc/.wh.gone": ""})
			e.lodeImage("known", known.manifest, map[string]string{"etc/os": "debian", "etc/gone": "x", "known": "k"})
			if known.chains[0] != unknown.chains[0] {
				t.Fatal("the images do not share a base chain")
			}
			var appliedK, appliedU int
			if lodeFirst {
				appliedK, appliedU = e.pull(known), e.pull(unknown)
			} else {
				appliedU, appliedK = e.pull(unknown), e.pull(known)
			}
			if appliedK != 0 {
				t.Errorf("the lode image applied %d layers, want 0", appliedK)
			}
			wantU := 2
			if lodeFirst {
				wantU = 1 // the base exists (remote-lower), then is materialized
			}
			if appliedU != wantU {
				t.Errorf("the unknown image applied %d layers, want %d", appliedU, wantU)
			}
			e.container("cu", unknown, func(root string) {
				if got := readTree(t, root); !cmp.Equal(got, map[string]string{"etc/os": "debian", "unknown": "u"}) {
					t.Errorf("unknown image's container sees %v", got)
				}
			})
			e.container("ck", known, func(root string) {
				if got := readTree(t, root); !cmp.Equal(got, map[string]string{"etc/os": "debian", "etc/gone": "x", "known": "k"}) {
					t.Errorf("lode image's container sees %v", got)
				}
			})
			wantBase := KindLocal
			if lodeFirst {
				wantBase = KindMaterialized
			}
			if got := e.kinds()[known.chains[0]]; got != wantBase {
				t.Errorf("base chain kind = %s, want %s", got, wantBase)
			}
			if got, want := len(e.layers.fetched), map[bool]int{true: 1, false: 0}[lodeFirst]; got != want {
				t.Errorf("snapshotter fetched %d blobs, want %d", got, want)
			}
			if got, want := testutil.ToFloat64(e.sn.fallback.WithLabelValues("materialized")), map[bool]float64{true: 1, false: 0}[lodeFirst]; got != want {
				t.Errorf("fallback{materialized} = %v, want %v", got, want)
			}
		})
	}
}

// TestPromoteLowerChain: image X's layers are a prefix of lode image Z's;
// Z is pulled first, so X's top chain exists as Z's remote lower chain and
// X's pull prepares nothing. A container of X must see X's files: the
// chain is promoted to X's top (Images.ByChainID).
func TestPromoteLowerChain(t *testing.T) {
	e := newEnv(t)
	z := e.image("registry.test/z:1", map[string]string{"a": "1"}, map[string]string{"z": "z"})
	x := e.image("registry.test/x:1", map[string]string{"a": "1"})
	e.lodeImage("z", z.manifest, map[string]string{"a": "1", "z": "z"})
	xi := e.lodeImage("x", x.manifest, map[string]string{"a": "1"})
	e.images.byChain[digest.Digest(x.chains[0])] = xi
	e.pull(z)
	if n := e.pull(x); n != 0 {
		t.Fatalf("pull of x applied %d layers", n)
	}
	e.container("cx", x, func(root string) {
		if got := readTree(t, root); !cmp.Equal(got, map[string]string{"a": "1"}) {
			t.Errorf("x's container sees %v", got)
		}
	})
	e.container("cz", z, func(root string) {
		if got := readTree(t, root); !cmp.Equal(got, map[string]string{"a": "1", "z": "z"}) {
			t.Errorf("z's container sees %v", got)
		}
	})
	if got := e.kinds()[x.chains[0]]; got != KindRemote {
		t.Errorf("x's top chain kind = %s, want %s", got, KindRemote)
	}
	if len(e.layers.fetched) != 0 {
		t.Errorf("fetched %v, want nothing", e.layers.fetched)
	}
}

func TestErrdefs(t *testing.T) {
	e := newEnv(t)
	im := e.image("registry.test/e:1", map[string]string{"a": "1"})
	e.pull(im)
	if _, err := e.sn.Prepare(e.ctx, "active", im.chains[0]); err != nil {
		t.Fatal(err)
	}
	bad := labelsFor(im, 0)
	bad[LabelManifestDigest] = "sha256:nothex"
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"Stat unknown", func() error { _, err := e.sn.Stat(e.ctx, "nope"); return err }, errdefs.ErrNotFound},
		{"Mounts unknown", func() error { _, err := e.sn.Mounts(e.ctx, "nope"); return err }, errdefs.ErrNotFound},
		{"Remove unknown", func() error { return e.sn.Remove(e.ctx, "nope") }, errdefs.ErrNotFound},
		{"Prepare existing key", func() error { _, err := e.sn.Prepare(e.ctx, "active", ""); return err }, errdefs.ErrAlreadyExists},
		{"Commit existing name", func() error { return e.sn.Commit(e.ctx, im.chains[0], "active") }, errdefs.ErrAlreadyExists},
		{"Prepare missing parent", func() error { _, err := e.sn.Prepare(e.ctx, "k2", "no-parent"); return err }, errdefs.ErrNotFound},
		{"View missing parent", func() error { _, err := e.sn.View(e.ctx, "k3", "no-parent"); return err }, errdefs.ErrNotFound},
		{"Prepare malformed labels", func() error {
			_, err := e.sn.Prepare(e.ctx, "k4", "", snapshots.WithLabels(bad))
			return err
		}, errdefs.ErrInvalidArgument},
	} {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestMountRefused: a Mounter that refuses the image (its manifest records
// another source) fails the container's Prepare; nothing is mounted.
func TestMountRefused(t *testing.T) {
	e := newEnv(t)
	im := e.image("registry.test/r:1", map[string]string{"a": "1"})
	e.lodeImage("r", im.manifest, map[string]string{"a": "1"})
	e.pull(im)
	delete(e.mnt.trees, "r") // the mounter refuses
	if _, err := e.sn.Prepare(e.ctx, "c", im.chains[0]); err == nil || !strings.Contains(err.Error(), "mounting lode image default/r") {
		t.Errorf("Prepare on a refused image = %v, want a mount error", err)
	}
	if len(e.mnt.mnt) != 0 {
		t.Errorf("mounted %v", e.mnt.mnt)
	}
}

// TestRestart reopens the snapshotter on the same root with the image
// still mounted (as a takeover hands it over): it is not mounted again.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	im := e.image("registry.test/s:1", map[string]string{"a": "1"})
	e.lodeImage("s", im.manifest, map[string]string{"a": "1"})
	e.pull(im)
	e.container("c", im, func(string) {})
	if err := e.sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn, err := New(e.ctx, Config{Root: e.root, Images: e.images, Mounter: e.mnt, Layers: e.layers})
	if err != nil {
		t.Fatal(err)
	}
	e.sn = sn
	e.container("c2", im, func(root string) {
		if got := readTree(t, root); !cmp.Equal(got, map[string]string{"a": "1"}) {
			t.Errorf("after restart the container sees %v", got)
		}
	})
	if diff := cmp.Diff([]string{"mount default/s"}, e.mnt.calls); diff != "" {
		t.Errorf("mounter calls (-want +got):\n%s", diff)
	}
}

// TestConformance runs containerd's snapshotter suite: with no lode image
// known, the snapshotter is containerd's overlayfs snapshotter (so the
// suite runs under that name: it then expects overlayfs's one documented
// difference, directories renamed from a lower layer, EXDEV).
func TestConformance(t *testing.T) {
	lodetest.Require(t, lodetest.Root)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(ctx, Config{Root: root, Images: &fakeImages{}, Mounter: &bindMounter{}})
		if err != nil {
			return nil, nil, err
		}
		return sn, func() error { return sn.Close() }, nil
	})
}
