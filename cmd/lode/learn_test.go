package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
)

// TestRunLearnsProfile (issue #21): lode run with --learn-profile=false
// publishes nothing; the first run that learns publishes the start's read
// set as a learned profile, a second one merges into it, lode inspect shows
// it, and a cold start on a fresh worker cache over the same store loads it
// at open and prefetches every chunk of it.
func TestRunLearnsProfile(t *testing.T) {
	requireMount(t)
	lodetest.Require(t, lodetest.Tool("runc"))
	c := newCLI(t)
	c.buildSample(t)
	ctx := context.Background()
	st, _, m, p := resolveDemo(t)
	im := profile.Image{Root: p.Root, ID: p.Manifest, M: m}
	opts := runOptions{runtime: "runc", network: "host", stateDir: filepath.Join(c.home, "mounts"), worker: c.workerOpts()}
	objects := func() []string {
		var keys []string
		st.List(ctx, store.ProfilesPrefix(p.Root, p.Manifest), func(k string, _ int64) error { keys = append(keys, k); return nil })
		return keys
	}
	run := func(learn bool) {
		t.Helper()
		o := opts
		o.worker.LearnProfile = learn
		o.worker.CacheDir = filepath.Join(t.TempDir(), "cache")
		var out, errOut syncBuffer
		if err := runRun(ctx, o, "demo", nil, nil, &out, &errOut); err != nil {
			t.Fatalf("run (learn %v) = %v\nstderr: %s", learn, err, errOut.String())
		}
		if strings.Contains(errOut.String(), "learning the startup profile") {
			t.Errorf("run (learn %v) failed to learn: %s", learn, errOut.String())
		}
	}

	run(false)
	if keys := objects(); len(keys) != 0 {
		t.Fatalf("a run with --learn-profile=false stored %q", keys)
	}
	run(true)
	if keys := objects(); len(keys) != 2 {
		t.Fatalf("the first learning run stored %q, want the merged profile and one start", keys)
	}
	run(true)
	lp, err := profile.Load(ctx, st, im)
	if err != nil || lp == nil || lp.Starts != 2 || len(lp.Chunks) == 0 {
		t.Fatalf("learned profile after two runs = %+v, %v; want 2 starts", lp, err)
	}
	for _, ch := range lp.Chunks {
		if m.Names[ch].IsZero() {
			t.Errorf("the learned profile names hole %d", ch)
		}
	}

	var js bytes.Buffer
	if err := runInspect(ctx, "demo", true, &js); err != nil {
		t.Fatal(err)
	}
	var ins catalog.Inspection
	if err := json.Unmarshal(js.Bytes(), &ins); err != nil {
		t.Fatal(err)
	}
	if l := ins.LearnedProfile; !l.Present || l.Chunks != len(lp.Chunks) || l.Starts != 2 || l.Updated.IsZero() {
		t.Errorf("inspect --json learned_profile = %+v, want %d chunks of 2 starts", l, len(lp.Chunks))
	}
	var txt bytes.Buffer
	if err := runInspect(ctx, "demo", false, &txt); err != nil || !strings.Contains(txt.String(), "from 2 starts") {
		t.Errorf("inspect does not show the learned profile (%v):\n%s", err, txt.String())
	}

	// A cold start on another worker's fresh cache over the same store.
	o := opts.worker
	o.CacheDir = filepath.Join(t.TempDir(), "other-worker-cache")
	w, err := openImage(ctx, o, "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	learned := w.LearnedProfile(ctx)
	if !slices.Equal(learned, lp.Chunks) {
		t.Fatalf("the worker loaded %v, want %v", learned, lp.Chunks)
	}
	want := int64(0)
	for _, ch := range profile.Merge(learned, m.Hints) {
		if !m.Names[ch].IsZero() {
			want++
		}
	}
	w.Prefetch(ctx, 8)
	// Wait (no timing is asserted) until every prefetch has started and
	// landed: Prefetches counts starts, ChunkTiers the chunks served.
	fetched := func() bool {
		tiers := w.Image.ChunkTiers()
		for _, ch := range learned {
			if tiers[ch] < 0 {
				return false
			}
		}
		return w.Image.Stats().Prefetches >= want
	}
	for deadline := time.Now().Add(30 * time.Second); !fetched() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := w.Image.Stats().Prefetches; got != want {
		t.Errorf("the cold start prefetched %d chunks, want %d (learned profile + build start set)", got, want)
	}
	if !fetched() {
		t.Errorf("the learned chunks %v were not all fetched: tiers %v", learned, w.Image.ChunkTiers())
	}
}
