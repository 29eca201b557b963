package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/worker"
)

// TestRunRecordThenPrefetch: a run with --record stores the start's read
// order in the manifest in place of the build-time start set (a new
// manifest, same root and creation time); a
// cold run afterwards prefetches those chunks, and --no-prefetch does not.
func TestRunRecordThenPrefetch(t *testing.T) {
	requireMount(t)
	lodetest.Require(t, lodetest.Tool("runc"))
	c := newCLI(t)
	c.buildSample(t)
	ctx := context.Background()
	st, kr, before, p0 := resolveDemo(t)
	if len(before.Hints) == 0 || before.Hints[0] != 0 {
		t.Fatalf("the fresh build has hints %v, want its build-time start set (the superblock's chunk first)", before.Hints)
	}
	opts := runOptions{runtime: "runc", network: "host", stateDir: filepath.Join(c.home, "mounts"), worker: c.workerOpts()}

	o := opts
	o.record = true
	o.worker.CacheDir = filepath.Join(c.home, "cache-record")
	var out, errOut syncBuffer
	if err := runRun(ctx, o, "demo", nil, nil, &out, &errOut); err != nil {
		t.Fatalf("run --record = %v\nstderr: %s", err, errOut.String())
	}
	m := regexp.MustCompile(`recorded a startup profile of (\d+) chunks: manifest ([0-9a-f]{64})`).FindStringSubmatch(errOut.String())
	if m == nil {
		t.Fatalf("run --record did not report the profile: %q", errOut.String())
	}
	if !regexp.MustCompile(`first output after \d`).MatchString(errOut.String()) {
		t.Errorf("run did not report its first output: %q", errOut.String())
	}
	after, p1, err := catalog.Resolve(ctx, st, kr, "default", "demo")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(m[1]); len(after.Hints) != n || n == 0 {
		t.Errorf("the manifest has %d hints, the run reported %s", len(after.Hints), m[1])
	}
	if p1.Manifest != m[2] || p1.Manifest == p0.Manifest || p1.Root != p0.Root || !p1.Created.Equal(p0.Created) {
		t.Errorf("pointer after recording = %+v, want manifest %s in root %s created %v", p1, m[2], p0.Root, p0.Created)
	}
	for _, h := range after.Hints {
		if after.Names[h].IsZero() {
			t.Errorf("hint %d names a hole", h)
		}
	}
	// The hints are in the secret part: the public part does not show them.
	sealed, err := st.Get(ctx, store.ManifestKey(p1.Root, p1.Manifest), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := manifest.ReadPublic(sealed); err != nil || pub.Hints != nil {
		t.Errorf("ReadPublic(profiled manifest) = hints %v, err %v; want none, nil", pub.Hints, err)
	}

	// A cold run with the profile prefetches the hinted chunks.
	for _, tc := range []struct {
		name       string
		noPrefetch bool
	}{{"with profile", false}, {"--no-prefetch", true}} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			o.noPrefetch = tc.noPrefetch
			o.worker.CacheDir = filepath.Join(t.TempDir(), "cache")
			var out, errOut syncBuffer
			w, err := openImage(ctx, o.worker, "demo", nil)
			if err != nil {
				t.Fatalf("opening the image: %v", err)
			}
			defer w.Close()
			rep, err := w.Run(ctx, worker.RunOptions{
				Base: filepath.Join(c.home, "run"), StateDir: o.stateDir, Runtime: o.runtime, Network: o.network,
				NoPrefetch: o.noPrefetch, Fetches: o.worker.Fetches, Stdout: &out, Stderr: &errOut,
			}, time.Now())
			if err != nil || rep.ExitCode != 0 {
				t.Fatalf("run = %v, exit %d\nstderr: %s", err, rep.ExitCode, errOut.String())
			}
			if !strings.Contains(out.String(), "hello from a lazily loaded image") {
				t.Errorf("the entrypoint printed %q", out.String())
			}
			got := w.Image.Stats().Prefetches
			if tc.noPrefetch && got != 0 {
				t.Errorf("Prefetches = %d with --no-prefetch, want 0", got)
			}
			if !tc.noPrefetch && got == 0 {
				t.Errorf("Prefetches = 0 with a profile of %d chunks, want > 0", len(after.Hints))
			}
		})
	}
}

func TestRunHeatmap(t *testing.T) {
	requireMount(t)
	lodetest.Require(t, lodetest.Tool("runc"))
	c := newCLI(t)
	c.buildSample(t)
	svg := filepath.Join(t.TempDir(), "run.svg")
	o := runOptions{runtime: "runc", network: "host", stateDir: filepath.Join(c.home, "mounts"), worker: c.workerOpts(), heatmap: svg}
	var out, errOut syncBuffer
	if err := runRun(context.Background(), o, "demo", nil, nil, &out, &errOut); err != nil {
		t.Fatalf("run --heatmap = %v\nstderr: %s", err, errOut.String())
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	// A cold run: the origin served chunks, the disk cache none, most chunks
	// were not read.
	for _, re := range []string{`>tier origin: [1-9]\d* `, `>tier disk: 0 `, `>not read: [1-9]\d* `, `>hole: \d+ `} {
		if !regexp.MustCompile(re).Match(b) {
			t.Errorf("the run's heatmap has no legend line matching %s", re)
		}
	}
}

func TestInspectHeatmapAndCompress(t *testing.T) {
	c := newCLI(t)
	c.buildSample(t)
	// The sample is built with the defaults (zstd, aligned); demo-raw is
	// the same source with raw chunks.
	if err := c.execLode(t, "build", sample(t), "--name", "demo-raw", "--compress", "none"); err != nil {
		t.Fatalf("build --compress none = %v\n%s", err, c.stderr.String())
	}
	if err := c.execLode(t, "build", sample(t), "--name", "bad", "--compress", "lz4"); err == nil || !strings.Contains(err.Error(), `"lz4"`) {
		t.Errorf("build --compress lz4 = %v, want an error naming it", err)
	}
	st, _ := openStore(context.Background())
	kr, _ := openKeyring()
	for name, want := range map[string]uint8{"demo": manifest.CompressionZstd, "demo-raw": manifest.CompressionNone} {
		m, _, err := catalog.Resolve(context.Background(), st, kr, "default", name)
		if err != nil || m.Compression != want {
			t.Fatalf("Resolve(%s) = %v, %v; want compression %d", name, m, err, want)
		}
	}
	for _, tc := range []struct{ image, shared string }{
		// demo and demo-raw share nothing (another salt); demo and its
		// twin share every stored chunk.
		{"demo", `shared with other images: 0 `},
		{"demo-raw", `shared with other images: 0 `},
	} {
		svg := filepath.Join(t.TempDir(), tc.image+".svg")
		if err := c.execLode(t, "inspect", tc.image, "--heatmap", svg); err != nil {
			t.Fatalf("inspect %s --heatmap = %v", tc.image, err)
		}
		b, err := os.ReadFile(svg)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{tc.shared, "unique to this image: ", "hole (not stored): ", "against 1 other live images"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("heatmap of %s lacks %q", tc.image, want)
			}
		}
	}
	if err := c.execLode(t, "build", sample(t), "--name", "twin"); err != nil {
		t.Fatal(err)
	}
	svg := filepath.Join(t.TempDir(), "twin.svg")
	if err := c.execLode(t, "inspect", "twin", "--heatmap", svg); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(svg)
	if !regexp.MustCompile(`unique to this image: 0 `).Match(b) || regexp.MustCompile(`shared with other images: 0 `).Match(b) {
		t.Errorf("a rebuild of demo should share every chunk:\n%s", b)
	}
	if err := c.execLode(t, "inspect", "demo", "--heatmap", filepath.Join(t.TempDir(), "x.png")); err == nil || !strings.Contains(err.Error(), ".svg") {
		t.Errorf("inspect --heatmap x.png = %v, want an error asking for .svg", err)
	}
}

func TestStoreHintsRefusesChangedPointer(t *testing.T) {
	c := newCLI(t)
	c.buildSample(t)
	ctx := context.Background()
	st, _ := openStore(ctx)
	kr, _ := openKeyring()
	m, p, err := catalog.Resolve(ctx, st, kr, "default", "demo")
	if err != nil {
		t.Fatal(err)
	}
	stale := p
	stale.Manifest = strings.Repeat("0", 64)
	m.Hints = []uint32{1}
	if _, err := catalog.StoreHints(ctx, st, kr, "default", "demo", stale, m); !errors.Is(err, catalog.ErrChanged) {
		t.Errorf("StoreHints with a stale pointer = %v, want catalog.ErrChanged", err)
	}
	if now, _ := catalog.Lookup(ctx, st, "default", "demo"); now != p {
		t.Errorf("pointer after refused recording = %+v, want unchanged %+v", now, p)
	}
	id, err := catalog.StoreHints(ctx, st, kr, "default", "demo", p, m)
	if err != nil {
		t.Fatal(err)
	}
	got, p2, err := catalog.Resolve(ctx, st, kr, "default", "demo")
	if err != nil || p2.Manifest != id || len(got.Hints) != 1 || got.Hints[0] != 1 {
		t.Errorf("after StoreHints: manifest %s hints %v, %v; want %s, [1]", p2.Manifest, got.Hints, err, id)
	}
}
