package gc

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ibuild "github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
	"github.com/lode-dev/lode/internal/store/mem"
	"github.com/lode-dev/lode/internal/store/s3"
)

var seedFlag = flag.Uint64("seed", 0, "run the randomized GC tests with this seed only (also $LODE_GC_SEED)")

func TestMain(m *testing.M) {
	code := m.Run()
	lodetest.StopS3Servers()
	os.Exit(code)
}

// seeds returns 1..n, or the one seed asked for.
func seeds(t *testing.T, n int) []uint64 {
	if *seedFlag != 0 {
		return []uint64{*seedFlag}
	}
	if v := os.Getenv("LODE_GC_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("LODE_GC_SEED=%q: %v", v, err)
		}
		return []uint64{s}
	}
	if v := os.Getenv("LODE_GC_SEEDS"); v != "" { // soak: more seeds
		if m, err := strconv.Atoi(v); err == nil {
			n = m
		}
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

// The randomized tests run nSeeds seeds by default (short: CI). The long
// mode runs more: LODE_GC_SEEDS=1000 go test ./internal/gc -run TestRandomMem
// -timeout 2h (docs/gc.md, "Testing").
func TestRandomMem(t *testing.T) {
	runRandom(t, func(t *testing.T) store.Store { return mem.New() }, 8, 50)
}

func TestRandomFile(t *testing.T) {
	runRandom(t, func(t *testing.T) store.Store {
		st, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}, 3, 40)
}

var s3Prefix atomic.Int64

func TestRandomS3(t *testing.T) {
	srv := lodetest.S3Server(t)
	runRandom(t, func(t *testing.T) store.Store {
		st, err := s3.New(t.Context(), s3.Config{
			Bucket: srv.Bucket, Endpoint: srv.Endpoint, Region: srv.Region, PathStyle: true,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
			Prefix: fmt.Sprintf("gc%d/", s3Prefix.Add(1)),
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}, 2, 40)
}

func runRandom(t *testing.T, newStore func(*testing.T) store.Store, nSeeds, steps int) {
	for _, seed := range seeds(t, nSeeds) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			randomRun(t, newStore(t), seed, steps)
		})
	}
}

// randomRun interleaves real image builds (internal/build, paused between
// phases: see buildProc), deletions, GC steps and clock moves, injects a
// crash before a random store operation of about a third of the steps, and
// after every step checks that every live image reads back byte-identical
// and that every pointer names an active or retired root. Builds are never
// killed by the test: one that resumes past its timeout, or after its root
// was retired, must refuse to write its pointer (build.ErrDeadline,
// build.ErrRootNotActive). At the end it runs one full cycle without faults
// and checks that the store holds exactly the live images' chunks: the
// unique chunks of deleted images, and whatever crashed and refused builds
// and copies left behind, are gone.
//
// Crash points are drawn over every store operation of a step: for each
// kind of step (a GC pass, a build's phase, …) the test keeps the largest
// number of operations such a step has made so far (at least 20) and draws
// the crash uniformly up to it.
func randomRun(t *testing.T, raw store.Store, seed uint64, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 0x9c))
	w := newWorld(t, raw)
	fs := &faultStore{Store: raw}
	cfg := Config{
		RotateAfter: 3 * hour, BuildTimeout: 2 * hour, Grace: 3 * hour,
		Now: w.clock, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Concurrency: 1,
	}
	c := NewCollector(fs, cfg)
	var history []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d (replay: go test ./internal/gc -run 'TestRandom.*/seed=%d$' -seed=%d)\nsteps:\n  %s\n%s",
			seed, seed, seed, strings.Join(history, "\n  "), fmt.Sprintf(format, args...))
	}
	names := []string{"a", "b", "c", "d", "e"}
	unique := 1000
	dir := t.TempDir()
	nproc := 0
	var pending []*buildProc
	defer func() {
		for _, p := range pending {
			p.abandon()
		}
	}()
	maxOps := map[string]int{}
	crashes, refused := 0, 0
	runBuild := func(p *buildProc) string {
		if !p.advance(w) {
			return fmt.Sprintf("build %s/%s reached phase %d", p.tenant, p.name, p.phase)
		}
		pending = slices.DeleteFunc(pending, func(x *buildProc) bool { return x == p })
		if p.err != nil && !expectedBuildError(p.err) {
			fail("build %s/%s: unexpected error: %v", p.tenant, p.name, p.err)
		}
		if p.err != nil && !errors.Is(p.err, errCrash) {
			refused++
		}
		key := p.tenant + "/" + p.name
		ptr, err := catalog.Lookup(ctx, raw, p.tenant, p.name)
		switch {
		case errors.Is(err, catalog.ErrNoImage):
			delete(w.live, key)
		case err != nil:
			fail("reconciling %s: %v", key, err)
		case ptr.Deleted:
			delete(w.live, key)
		case p.res.ManifestID != "" && ptr.Manifest == p.res.ManifestID:
			if p.err != nil {
				fail("build %s/%s failed (%v) but its pointer was written", p.tenant, p.name, p.err)
			}
			blocks, err := p.chunksOf()
			if err != nil {
				fail("build %s/%s: reading its image: %v", p.tenant, p.name, err)
			}
			w.live[key] = blocks
		}
		if p.err != nil {
			return fmt.Sprintf("build %s/%s ended: %v", p.tenant, p.name, p.err)
		}
		return fmt.Sprintf("build %s/%s finished into %s", p.tenant, p.name, p.res.Root)
	}
	gcStep := func(what string, f func() error) string {
		if err := f(); err != nil {
			if !errors.Is(err, errCrash) {
				fail("gc %s: unexpected error: %v", what, err)
			}
			return fmt.Sprintf("gc %s crashed: %v", what, err)
		}
		return "gc " + what
	}

	for step := 0; step < steps; step++ {
		// Weights: start a build 3, advance one 4, delete 1, pass 2,
		// rotate now 1 (every other draw), collect 1, clock 2.
		op := rng.IntN(14)
		var adv *buildProc
		kind := ""
		switch {
		case op <= 2:
			kind = "build start"
		case op <= 6:
			if len(pending) > 0 {
				adv = pending[rng.IntN(len(pending))]
				kind = fmt.Sprintf("build phase %d", adv.phase)
			}
		case op == 7:
			kind = "delete"
		case op == 8 || op == 9:
			kind = "pass"
		case op == 10 || op == 11:
			kind = "rotate/collect"
		}
		crashAt := 0
		if kind != "" && rng.IntN(3) == 0 {
			crashAt = 1 + rng.IntN(max(20, maxOps[kind]))
		}
		fs.arm(crashAt)
		var desc string
		switch {
		case op <= 2:
			tenant, name := testTenants[rng.IntN(len(testTenants))], names[rng.IntN(len(names))]
			var files []int
			for range 2 + rng.IntN(5) {
				switch r := rng.IntN(20); {
				case r < 12:
					files = append(files, rng.IntN(8)) // a base shared by many images
				case r < 17:
					unique++
					files = append(files, unique)
				}
			}
			nproc++
			pdir := filepath.Join(dir, strconv.Itoa(nproc))
			if err := os.Mkdir(pdir, 0o755); err != nil {
				t.Fatal(err)
			}
			p := w.newBuildProc(fs, pdir, tenant, name, files, cfg.BuildTimeout)
			pending = append(pending, p)
			desc = "start: " + runBuild(p)
		case op <= 6:
			if adv == nil {
				desc = "no build to advance"
				break
			}
			desc = runBuild(adv)
		case op == 7:
			live := slices.Sorted(mapKeys(w.live))
			if len(live) == 0 {
				desc = "nothing to delete"
				break
			}
			key := live[rng.IntN(len(live))]
			tenant, name, _ := strings.Cut(key, "/")
			if err := catalog.Delete(ctx, fs, tenant, name); err != nil {
				if !errors.Is(err, errCrash) {
					fail("deleting %s: %v", key, err)
				}
				desc = fmt.Sprintf("delete %s crashed", key)
			} else {
				desc = "delete " + key
			}
			w.reconcile(ctx, tenant, name, nil)
		case op == 8 || op == 9:
			desc = gcStep("pass", func() error { _, err := c.Pass(ctx); return err })
		case op == 10 && rng.IntN(2) == 0:
			desc = gcStep("rotate now", func() error { _, err := c.RotateNow(ctx); return err })
		case op == 10 || op == 11:
			desc = gcStep("collect", func() error { _, err := c.Collect(ctx); return err })
		default:
			// Builds are not killed when they outlive BuildTimeout: a
			// paused one that is advanced later must refuse to commit.
			d := time.Duration(rng.IntN(60)) * time.Minute
			w.now = w.now.Add(d)
			desc = fmt.Sprintf("clock +%v", d)
		}
		fs.mu.Lock()
		ops, crashed := fs.ops, crashAt > 0 && fs.ops >= crashAt
		fs.mu.Unlock()
		if kind != "" {
			maxOps[kind] = max(maxOps[kind], ops)
		}
		if crashed {
			crashes++
		}
		if crashAt > 0 {
			desc += fmt.Sprintf(" [crash armed at op %d of %d]", crashAt, ops)
		}
		history = append(history, fmt.Sprintf("%2d %s %s", step, w.now.Format("01-02T15:04"), desc))
		fs.arm(0)
		if err := w.check(ctx); err != nil {
			fail("after step %d: %v", step, err)
		}
	}
	for _, p := range pending {
		p.abandon()
	}
	pending = nil
	history = append(history, fmt.Sprintf("(%d crashes injected, %d builds refused at the commit check; most operations of a step by kind: %v)", crashes, refused, maxOps))

	// One full cycle without faults or builds: everything not live goes.
	history = append(history, "final cycle")
	final := cfg
	final.RotateAfter = 1000 * hour // only the one forced rotation
	c = NewCollector(raw, final)
	steps2 := []func() error{
		func() error { _, err := c.RotateNow(ctx); return err },
		func() error { w.now = w.now.Add(cfg.BuildTimeout); _, err := c.Pass(ctx); return err },
		func() error { w.now = w.now.Add(cfg.Grace); _, err := c.Pass(ctx); return err },
	}
	for i, f := range steps2 {
		if err := f(); err != nil {
			fail("final cycle step %d: %v", i, err)
		}
		if err := w.check(ctx); err != nil {
			fail("final cycle step %d: %v", i, err)
		}
	}
	roots, err := store.Roots(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 1 || roots[0].State != store.RootActive {
		fail("roots after the final cycle: %+v, want one active root", roots)
	}
	want := map[chunk.Name]bool{}
	for key := range w.live {
		tenant, name, _ := strings.Cut(key, "/")
		m, _, err := catalog.Resolve(ctx, raw, w.kr, tenant, name)
		if err != nil {
			fail("resolving %s: %v", key, err)
		}
		for _, n := range m.Names {
			if !n.IsZero() {
				want[n] = true
			}
		}
	}
	chunks, err := chunksInStore(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	got := map[chunk.Name]bool{}
	for _, n := range chunks[roots[0].ID] {
		got[n] = true
		if !want[n] {
			fail("chunk %s (plaintext of %d bytes) is still stored but no live image names it", n, len(w.plain[n]))
		}
	}
	if len(got) != len(want) {
		fail("store holds %d chunks, live images name %d", len(got), len(want))
	}
	var pointers []string
	for _, tn := range testTenants {
		es, err := catalog.List(ctx, raw, tn, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			pointers = append(pointers, tn+"/"+e.Name)
		}
	}
	if livekeys := slices.Sorted(mapKeys(w.live)); !slices.Equal(pointers, livekeys) {
		fail("pointers after the final cycle %q, want the live images %q", pointers, livekeys)
	}
	t.Logf("seed %d: %d live images, %d chunks in root %s\n  %s", seed, len(w.live), len(got), roots[0].ID, strings.Join(history, "\n  "))
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestSlowBuildRefusesExpiredRoot: a real build that chose a root, was
// paused past BuildTimeout while the collector retired and expired that
// root, must not write its pointer when it resumes; one resumed in time
// after the rotation must not either (its root is retired), and the image
// must not appear.
func TestSlowBuildRefusesExpiredRoot(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pause time.Duration // after the rotation
		want  error
	}{
		{"resumed after the root expired", 3 * hour, ibuild.ErrDeadline},
		{"resumed while the root is retired", time.Minute, ibuild.ErrRootNotActive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			raw := mem.New()
			w := newWorld(t, raw)
			cfg := Config{RotateAfter: 3 * hour, BuildTimeout: 2 * hour, Grace: 3 * hour, Now: w.clock, Concurrency: 1}
			c := NewCollector(raw, cfg)
			p := w.newBuildProc(raw, t.TempDir(), "acme", "slow", []int{1, 2, 3}, cfg.BuildTimeout)
			defer p.abandon()
			for p.phase < phaseCommit {
				if p.advance(w) {
					t.Fatalf("build ended before its commit: %v", p.err)
				}
			}
			if _, err := c.RotateNow(ctx); err != nil {
				t.Fatal(err)
			}
			w.now = w.now.Add(tc.pause)
			if _, err := c.Pass(ctx); err != nil {
				t.Fatal(err)
			}
			if !p.advance(w) {
				t.Fatal("build did not end")
			}
			if !errors.Is(p.err, tc.want) {
				t.Fatalf("build = %v, want %v", p.err, tc.want)
			}
			if _, err := catalog.Lookup(ctx, raw, "acme", "slow"); !errors.Is(err, catalog.ErrNoImage) {
				t.Fatalf("Lookup = %v, want ErrNoImage: the build wrote its pointer", err)
			}
		})
	}
}
