package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/storeurl"
)

// field returns the value of "label:  value" in tabwriter output.
func field(t *testing.T, out, label string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(label) + `:\s+(.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q line in:\n%s", label, out)
	}
	return strings.TrimSpace(m[1])
}

// publicManifest reads the public part of the current tenant's image name
// from the configured store.
func publicManifest(t *testing.T, name string) (*manifest.Manifest, store.Pointer) {
	t.Helper()
	ctx := context.Background()
	st, err := openStore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := catalog.Lookup(ctx, st, global.tenant, name)
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
	return m, p
}

func TestMissingKeyringHint(t *testing.T) {
	newCLI(t)
	ctx := context.Background()
	var out bytes.Buffer
	for name, err := range map[string]error{
		"build":   runBuild(ctx, buildOptions{name: "x", chunkSize: 512 << 10}, "rootfs:/nonexistent.tar", &out),
		"inspect": runInspect(ctx, "x", false, &out),
	} {
		if err == nil || !strings.Contains(err.Error(), "lode keys create") || !strings.Contains(err.Error(), global.keyringPath()) {
			t.Errorf("%s without a keyring = %v, want a hint to run `lode keys create` naming %s", name, err, global.keyringPath())
		}
	}
	mountErr := runMount(ctx, mountOptions{stateDir: t.TempDir()}, "x", filepath.Join(t.TempDir(), "mnt"))
	if mountErr == nil || !strings.Contains(mountErr.Error(), "lode keys create") {
		t.Errorf("mount without a keyring = %v, want the keys create hint", mountErr)
	}
}

func TestKeysBuildImagesInspectDelete(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	var out bytes.Buffer
	if err := runKeysCreate(&out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "created keyring "+global.keyringPath()) || !strings.Contains(s, "added key for tenant default") {
		t.Errorf("keys create printed %q", s)
	}
	if fi, err := os.Stat(global.keyringPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("keyring file: %v, mode %v; want 0600", err, fi.Mode())
	}
	out.Reset()
	if err := runKeysCreate(&out); err != nil || !strings.Contains(out.String(), "tenant default already has a key") {
		t.Errorf("second keys create = %v, %q", err, out.String())
	}

	keep := filepath.Join(c.home, "demo.ext4")
	out.Reset()
	if err := runBuild(ctx, buildOptions{name: "demo", chunkSize: 512 << 10, keepImage: keep}, sample(t), &out); err != nil {
		t.Fatalf("build: %v", err)
	}
	m, p := publicManifest(t, "demo")
	fi, err := os.Stat(keep)
	if err != nil {
		t.Fatal(err)
	}
	if m.ImageSize != fi.Size() || m.ChunkSize != 512<<10 || m.FSType != "ext4" {
		t.Errorf("manifest: size %d (kept image %d), chunk size %d, fs %q", m.ImageSize, fi.Size(), m.ChunkSize, m.FSType)
	}
	built := out.String()
	wantLine := regexp.MustCompile(`^built default/demo: .* in, .* image, (\d+) chunks \((\d+) holes, (\d+) new, (\d+) deduplicated, `)
	sm := wantLine.FindStringSubmatch(built)
	if sm == nil {
		t.Fatalf("build printed %q", built)
	}
	if sm[1] != strconv.Itoa(len(m.Names)) || sm[2] != strconv.Itoa(m.Holes()) {
		t.Errorf("build reported %s chunks, %s holes; manifest has %d, %d", sm[1], sm[2], len(m.Names), m.Holes())
	}
	if !strings.Contains(built, "root "+string(p.Root)+", manifest "+p.Manifest) {
		t.Errorf("build output %q does not name root %s and manifest %s", built, p.Root, p.Manifest)
	}

	out.Reset()
	if err := runImages(ctx, false, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("images printed %q, want a header and one image", out.String())
	}
	// NAME SIZE CHUNKS SOURCE ROOT MANIFEST CREATED; SIZE is two fields ("59 MiB").
	if f := strings.Fields(lines[1]); len(f) < 7 || f[0] != "demo" || f[3] != strconv.Itoa(len(m.Names)) ||
		!strings.HasPrefix(m.SourceDigest, f[4]) || f[5] != string(p.Root) || f[6] != p.Manifest[:12] {
		t.Errorf("images line %q, want demo … %d chunks, source %.19s, root %s, manifest %s", lines[1], len(m.Names), m.SourceDigest, p.Root, p.Manifest[:12])
	}

	out.Reset()
	if err := runInspect(ctx, "demo", false, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for label, want := range map[string]string{
		"image":      "default/demo",
		"manifest":   p.Manifest,
		"root":       string(p.Root),
		"chunks":     strconv.Itoa(len(m.Names)),
		"entrypoint": `["/bin/sh", "/app/start.sh"]`,
		"workdir":    "/app",
		"user":       "app",
		"cmd":        "(none)",
	} {
		if got := field(t, text, label); got != want {
			t.Errorf("inspect %s: %q, want %q", label, got, want)
		}
	}
	if got, want := field(t, text, "holes"), strconv.Itoa(m.Holes())+" ("; !strings.HasPrefix(got, want) {
		t.Errorf("inspect holes: %q, want %q…", got, want)
	}

	out.Reset()
	if err := runInspect(ctx, "demo", true, &out); err != nil {
		t.Fatal(err)
	}
	var j catalog.Inspection
	if err := json.Unmarshal(out.Bytes(), &j); err != nil {
		t.Fatalf("inspect --json printed %q: %v", out.String(), err)
	}
	distinct := map[string]bool{}
	for _, n := range m.Names {
		if !n.IsZero() {
			distinct[n.String()] = true
		}
	}
	if !strings.HasPrefix(m.SourceRef, "oci:") || len(m.DiffIDs) == 0 {
		t.Errorf("manifest source record: ref %q, %d diff IDs; want the oci: reference and its layers", m.SourceRef, len(m.DiffIDs))
	}
	want := catalog.Inspection{
		Tenant: "default", Image: "demo", Source: m.SourceDigest, Root: string(p.Root), Manifest: p.Manifest,
		SourceRef: m.SourceRef, DiffIDs: m.DiffIDs, ChainIDs: m.ChainIDs(),
		Created: p.Created, FSType: "ext4", ImageSize: fi.Size(), ChunkSize: 512 << 10,
		Chunks: len(m.Names), Holes: m.Holes(), Distinct: len(distinct), Shared: 0, Unique: len(distinct),
		Entrypoint: []string{"/bin/sh", "/app/start.sh"}, WorkingDir: "/app", User: "app",
		Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from a lazily loaded image"},
	}
	// The build's start set (metadata, the entrypoint's ELF closure) is in
	// the secret part, which ReadPublic does not open: any non-empty set.
	if j.StartSet == 0 {
		t.Errorf("inspect --json: start_set_chunks 0, want the build's start set")
	}
	want.StartSet = j.StartSet
	if diff := cmp.Diff(want, j); diff != "" {
		t.Errorf("inspect --json (-want +got):\n%s", diff)
	}

	// images delete, through cobra as a user types it.
	if err := c.execLode(t, "images", "delete", "demo"); err != nil {
		t.Fatalf("lode images delete: %v", err)
	}
	if !strings.Contains(c.stdout.String(), "deleted default/demo") {
		t.Errorf("images delete printed %q", c.stdout.String())
	}
	out.Reset()
	if err := runImages(ctx, false, &out); err != nil || strings.Contains(out.String(), "demo") {
		t.Errorf("images after delete = %v, %q: want demo hidden", err, out.String())
	}
	out.Reset()
	if err := runImages(ctx, true, &out); err != nil || !strings.Contains(out.String(), "demo (deleted)") {
		t.Errorf("images --all after delete = %v, %q: want demo (deleted)", err, out.String())
	}
	if err := runInspect(ctx, "demo", false, &out); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("inspect of a deleted image = %v, want ErrNoImage", err)
	}
}

// TestS3SameAsFile builds, lists and inspects the sample against an S3
// bucket (versitygw) and a file store with one keyring: the outputs match
// but for the manifest id and times, and the manifests' public parts are
// identical.
func TestS3SameAsFile(t *testing.T) {
	s3 := lodetest.S3Server(t)
	for _, kv := range s3.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	c := newCLI(t)
	ctx := context.Background()
	var out bytes.Buffer
	if err := runKeysCreate(&out); err != nil {
		t.Fatal(err)
	}
	type result struct {
		build, images, inspect string
		public                 *manifest.Manifest
		id                     string // manifest id
	}
	run := func(storeURL string) result {
		t.Helper()
		global.storeURL = storeURL
		var r result
		var b bytes.Buffer
		if err := runBuild(ctx, buildOptions{name: "demo", chunkSize: 512 << 10}, sample(t), &b); err != nil {
			t.Fatalf("build against %s: %v", storeURL, err)
		}
		r.build = b.String()
		b.Reset()
		if err := runImages(ctx, false, &b); err != nil {
			t.Fatalf("images against %s: %v", storeURL, err)
		}
		r.images = b.String()
		b.Reset()
		if err := runInspect(ctx, "demo", false, &b); err != nil {
			t.Fatalf("inspect against %s: %v", storeURL, err)
		}
		r.inspect = b.String()
		var p store.Pointer
		r.public, p = publicManifest(t, "demo")
		r.id = p.Manifest
		return r
	}
	s3URL := s3.URL("lode/prod")
	viaFile := run("file://" + filepath.Join(c.home, "store"))
	viaS3 := run(s3URL)

	if diff := cmp.Diff(viaFile.public, viaS3.public); diff != "" {
		t.Errorf("public manifest, file (-) vs s3 (+):\n%s", diff)
	}
	// What differs by nature: timings, the store's name, the manifest id
	// (a fresh data key seals each manifest) and creation times.
	mask := func(s string, r result) string {
		s = regexp.MustCompile(`[0-9.]+s, [0-9]+ MB/s`).ReplaceAllString(s, "T")
		s = regexp.MustCompile(`store .*`).ReplaceAllString(s, "store S")
		s = strings.ReplaceAll(s, r.id, "M")
		s = strings.ReplaceAll(s, r.id[:12], "M")
		s = regexp.MustCompile(`\d{4}-\d\d-\d\d[ T][0-9:+Z-]+`).ReplaceAllString(s, "DATE")
		return s
	}
	for _, part := range []struct {
		name     string
		file, s3 string
	}{
		{"build", viaFile.build, viaS3.build},
		{"images", viaFile.images, viaS3.images},
		{"inspect", viaFile.inspect, viaS3.inspect},
	} {
		if diff := cmp.Diff(mask(part.file, viaFile), mask(part.s3, viaS3)); diff != "" {
			t.Errorf("%s output, file (-) vs s3 (+):\n%s", part.name, diff)
		}
	}
	if !strings.Contains(viaS3.build, "store s3://") {
		t.Errorf("s3 build output %q does not name the s3 store", viaS3.build)
	}
	// The S3 store really holds the image: it opens directly.
	st, err := storeurl.Open(ctx, s3URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.Lookup(ctx, st, "default", "demo"); err != nil {
		t.Errorf("Lookup in %s: %v", s3URL, err)
	}
}

// TestWrongTenant: another tenant sees no image of that name, and the
// right tenant name with another keyring's key cannot open the manifest.
func TestWrongTenant(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	c.buildSample(t)
	var out bytes.Buffer

	global.tenant = "other"
	if err := runKeysCreate(&out); err != nil {
		t.Fatal(err)
	}
	if err := runInspect(ctx, "demo", false, &out); !errors.Is(err, catalog.ErrNoImage) || !strings.Contains(err.Error(), "tenant other") {
		t.Errorf("inspect as tenant other = %v, want ErrNoImage naming the tenant", err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := runMount(ctx, mountOptions{stateDir: t.TempDir(), worker: c.workerOpts()}, "demo", mnt); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("mount as tenant other = %v, want ErrNoImage", err)
	}

	// Tenant default, but from a keyring whose key for default is another.
	global.tenant = "default"
	global.keyring = filepath.Join(t.TempDir(), "stolen-name.json")
	if err := runKeysCreate(&out); err != nil {
		t.Fatal(err)
	}
	err := runInspect(ctx, "demo", false, &out)
	if !errors.Is(err, manifest.ErrWrongKey) || !strings.Contains(err.Error(), "default/demo") {
		t.Errorf("inspect with another keyring's key = %v, want ErrWrongKey naming default/demo", err)
	}
	if err := runMount(ctx, mountOptions{stateDir: t.TempDir(), worker: c.workerOpts()}, "demo", mnt); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("mount with another keyring's key = %v, want ErrWrongKey", err)
	}
	if isMounted(t, mnt) {
		t.Errorf("%s is mounted after a refused mount", mnt)
	}

	// Tenant other's key used on tenant default's pointer: ErrWrongKey too.
	st, err := openStore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.LoadFileKeyring(filepath.Join(c.home, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := catalog.Resolve(ctx, st, otherAsDefault{kr}, "default", "demo"); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("Resolve of default/demo with tenant other's key = %v, want ErrWrongKey", err)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "default", "demo"); err != nil {
		t.Errorf("Resolve with the right key = %v", err)
	}
}

// otherAsDefault unwraps tenant default's keys with tenant other's key.
type otherAsDefault struct{ kr *manifest.FileKeyring }

func (o otherAsDefault) Wrap(ctx context.Context, _ string, k []byte) ([]byte, error) {
	return o.kr.Wrap(ctx, "other", k)
}

func (o otherAsDefault) Unwrap(ctx context.Context, _ string, w []byte) ([]byte, error) {
	return o.kr.Unwrap(ctx, "other", w)
}
