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
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

func TestRandomMem(t *testing.T) {
	runRandom(t, func(t *testing.T) store.Store { return mem.New() }, 30, 50)
}

func TestRandomFile(t *testing.T) {
	runRandom(t, func(t *testing.T) store.Store {
		st, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}, 10, 40)
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
	}, 5, 40)
}

func runRandom(t *testing.T, newStore func(*testing.T) store.Store, nSeeds, steps int) {
	for _, seed := range seeds(t, nSeeds) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			randomRun(t, newStore(t), seed, steps)
		})
	}
}

// randomRun interleaves image builds (split into their phases), deletions,
// GC steps and clock moves, injects a crash before a random store operation
// of about a third of the steps, and after every step checks that every
// live image reads back byte-identical. At the end it runs one full cycle
// without faults and checks that the store holds exactly the live images'
// chunks: the unique chunks of deleted images, and whatever crashed builds
// and copies left behind, are gone.
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
	var pending []*build
	finish := func(b *build) { pending = slices.DeleteFunc(pending, func(x *build) bool { return x == b }) }
	runBuild := func(b *build) string {
		done, err := w.step(ctx, fs, b)
		switch {
		case err != nil:
			finish(b) // the builder crashed: it never runs again
			w.reconcile(ctx, b.tenant, b.name, b)
			return fmt.Sprintf("build %s/%s phase %d crashed: %v", b.tenant, b.name, b.phase, err)
		case done:
			finish(b)
			return fmt.Sprintf("build %s/%s finished into %s", b.tenant, b.name, b.root)
		}
		return fmt.Sprintf("build %s/%s reached phase %d (root %s)", b.tenant, b.name, b.phase, b.root)
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
		crashAt := 0
		if rng.IntN(3) == 0 {
			crashAt = 1 + rng.IntN(20)
		}
		fs.arm(crashAt)
		var desc string
		// Weights: start a build 3, advance one 4, delete 1, pass 2,
		// rotate now 1 (every other draw), collect 1, clock 2.
		switch op := rng.IntN(14); {
		case op <= 2:
			tenant, name := testTenants[rng.IntN(len(testTenants))], names[rng.IntN(len(names))]
			blocks := make([][]byte, 2+rng.IntN(5))
			for i := range blocks {
				switch r := rng.IntN(20); {
				case r < 12:
					blocks[i] = block(rng.IntN(8)) // a base shared by many images
				case r < 17:
					unique++
					blocks[i] = block(unique)
				} // else a hole
			}
			b := w.newBuild(tenant, name, blocks)
			pending = append(pending, b)
			desc = "start: " + runBuild(b)
		case op <= 6:
			if len(pending) == 0 {
				desc = "no build to advance"
				break
			}
			desc = runBuild(pending[rng.IntN(len(pending))])
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
			d := time.Duration(rng.IntN(60)) * time.Minute
			next := w.now.Add(d)
			// No build runs longer than BuildTimeout: one that would is
			// killed (it never writes again).
			for _, b := range slices.Clone(pending) {
				if !next.Before(b.started.Add(cfg.BuildTimeout)) {
					finish(b)
				}
			}
			w.now = next
			desc = fmt.Sprintf("clock +%v", d)
		}
		if crashAt > 0 {
			desc += fmt.Sprintf(" [crash armed at op %d]", crashAt)
		}
		history = append(history, fmt.Sprintf("%2d %s %s", step, w.now.Format("01-02T15:04"), desc))
		fs.arm(0)
		if err := w.check(ctx); err != nil {
			fail("after step %d: %v", step, err)
		}
	}

	// One full cycle without faults or builds: everything not live goes.
	pending = nil
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
