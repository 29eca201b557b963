package gc

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

const hour = time.Hour

func testConfig(w *world) Config {
	return Config{
		RotateAfter: 1000 * hour, BuildTimeout: hour, Grace: 48 * hour,
		Now: w.clock, Log: slog.New(slog.NewTextHandler(testWriter{w.t}, nil)), Concurrency: 4,
	}
}

type testWriter struct{ t testing.TB }

func (tw testWriter) Write(p []byte) (int, error) {
	tw.t.Helper()
	tw.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func states(t *testing.T, st store.Store) map[store.RootID]store.RootState {
	t.Helper()
	roots, err := store.Roots(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	out := map[store.RootID]store.RootState{}
	for _, ri := range roots {
		out[ri.ID] = ri.State
	}
	return out
}

func pointer(t *testing.T, st store.Store, tenant, name string) store.Pointer {
	t.Helper()
	p, err := catalog.Lookup(context.Background(), st, tenant, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustCheck(t *testing.T, w *world) {
	t.Helper()
	if err := w.check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

var (
	r1 = store.RootIDFor(1)
	r2 = store.RootIDFor(2)
	r3 = store.RootIDFor(3)
)

func TestTransitions(t *testing.T) {
	all := []store.RootState{store.RootActive, store.RootRetired, store.RootExpired, store.RootDeleting, "bogus"}
	legal := map[[2]store.RootState]bool{
		{store.RootActive, store.RootRetired}:   true,
		{store.RootRetired, store.RootExpired}:  true,
		{store.RootExpired, store.RootDeleting}: true,
	}
	for _, from := range all {
		for _, to := range all {
			err := store.CheckTransition(from, to)
			if legal[[2]store.RootState{from, to}] {
				if err != nil {
					t.Errorf("store.CheckTransition(%s, %s) = %v, want nil", from, to, err)
				}
			} else if !errors.Is(err, store.ErrIllegalTransition) {
				t.Errorf("store.CheckTransition(%s, %s) = %v, want store.ErrIllegalTransition", from, to, err)
			}
		}
	}
}

func TestRotate(t *testing.T) {
	type root struct {
		n     int
		state store.RootState
		age   time.Duration
	}
	tests := []struct {
		name   string
		roots  []root
		force  bool
		active store.RootID
		want   map[store.RootID]store.RootState
	}{
		{name: "empty store", want: map[store.RootID]store.RootState{}},
		{name: "young active root", roots: []root{{1, store.RootActive, hour}}, active: r1,
			want: map[store.RootID]store.RootState{r1: store.RootActive}},
		{name: "old active root", roots: []root{{1, store.RootActive, 1001 * hour}}, active: r2,
			want: map[store.RootID]store.RootState{r1: store.RootRetired, r2: store.RootActive}},
		{name: "forced", roots: []root{{1, store.RootActive, hour}}, force: true, active: r2,
			want: map[store.RootID]store.RootState{r1: store.RootRetired, r2: store.RootActive}},
		{name: "crash between create and retire", roots: []root{{1, store.RootActive, 1001 * hour}, {2, store.RootActive, 0}}, active: r2,
			want: map[store.RootID]store.RootState{r1: store.RootRetired, r2: store.RootActive}},
		{name: "no active root", roots: []root{{1, store.RootRetired, hour}, {2, store.RootExpired, hour}}, active: r3,
			want: map[store.RootID]store.RootState{r1: store.RootRetired, r2: store.RootExpired, r3: store.RootActive}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := mem.New()
			w := newWorld(t, st)
			for _, r := range tt.roots {
				if err := store.WriteRoot(t.Context(), st, store.RootInfo{ID: store.RootIDFor(r.n), State: r.state, Since: w.now.Add(-r.age)}); err != nil {
					t.Fatal(err)
				}
			}
			c := NewCollector(st, testConfig(w))
			rotate := c.Rotate
			if tt.force {
				rotate = c.RotateNow
			}
			got, err := rotate(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.active {
				t.Errorf("Rotate = %q, want %q", got, tt.active)
			}
			if diff := cmp.Diff(tt.want, states(t, st)); diff != "" {
				t.Errorf("states after Rotate (-want +got):\n%s", diff)
			}
			// Rotating again right away changes nothing.
			if got, err := c.Rotate(t.Context()); err != nil || got != tt.active {
				t.Errorf("second Rotate = %q, %v; want %q", got, err, tt.active)
			}
			if diff := cmp.Diff(tt.want, states(t, st)); diff != "" {
				t.Errorf("states after second Rotate (-want +got):\n%s", diff)
			}
		})
	}
}

// threeImages builds a, b (sharing blocks 1 and 2) and c (deleted later),
// with a hole in b.
func threeImages(w *world) {
	w.buildNow("acme", "a", [][]byte{block(1), block(2), block(3)})
	w.buildNow("acme", "b", [][]byte{block(1), nil, block(2), block(4)})
	w.buildNow("zeta", "c", [][]byte{block(1), block(5), block(6)})
}

func TestCopyForward(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	threeImages(w)
	if err := catalog.Delete(ctx, st, "zeta", "c"); err != nil {
		t.Fatal(err)
	}
	delete(w.live, "zeta/c")
	before := pointer(t, st, "acme", "a")
	c := NewCollector(st, testConfig(w))
	if _, err := c.RotateNow(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CopyForward(ctx, r2, r1); !errors.Is(err, ErrWrongState) {
		t.Errorf("CopyForward(r2→r1) = %v, want ErrWrongState", err)
	}
	stats, err := c.CopyForward(ctx, r1, r2)
	if err != nil {
		t.Fatal(err)
	}
	// Distinct chunks of live images: blocks 1–4; plus two manifests.
	var wantBytes int64 = 4*(testChunkSize+chunk.Overhead) + sizeOf(t, st, r1, "acme", "a") + sizeOf(t, st, r1, "acme", "b")
	want := Stats{ImagesCopied: 2, ObjectsCopied: 6, BytesCopied: wantBytes}
	if diff := cmp.Diff(want, stats); diff != "" {
		t.Errorf("CopyForward stats (-want +got):\n%s", diff)
	}
	after := pointer(t, st, "acme", "a")
	if after.Root != r2 || after.Manifest != before.Manifest || !after.Created.Equal(before.Created) || after.Deleted {
		t.Errorf("pointer after copy-forward = %+v, want root %s and the rest of %+v", after, r2, before)
	}
	if p := pointer(t, st, "zeta", "c"); p.Root != r1 || !p.Deleted {
		t.Errorf("deleted image's pointer = %+v, want it left in %s", p, r1)
	}
	mustCheck(t, w)
	// Manifest bytes are copied unchanged.
	m1, _ := st.Get(ctx, store.ManifestKey(r1, before.Manifest), nil)
	m2, _ := st.Get(ctx, store.ManifestKey(r2, before.Manifest), nil)
	if string(m1) != string(m2) {
		t.Error("manifest bytes changed by copy-forward")
	}
	chunks, err := chunksInStore(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(chunks[r2]); got != 4 {
		t.Errorf("root %s holds %d chunks, want 4 (blocks of live images only)", r2, got)
	}
	// Idempotent: nothing left to copy (the pointers now name r2).
	stats, err = c.CopyForward(ctx, r1, r2)
	if err != nil || stats != (Stats{}) {
		t.Errorf("second CopyForward = %+v, %v; want nothing copied", stats, err)
	}
}

func sizeOf(t *testing.T, st store.Store, root store.RootID, tenant, name string) int64 {
	t.Helper()
	n, err := st.Stat(context.Background(), store.ManifestKey(root, pointer(t, st, tenant, name).Manifest))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A build that chose the active root just before rotation writes its
// pointer into the retired root after copy-forward ran; the root must not
// expire before the settle period, and the late image must be copied.
func TestLateBuildIntoRetiredRoot(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	w.buildNow("acme", "a", [][]byte{block(1), block(2)})
	late := w.newBuild("acme", "late", [][]byte{block(2), block(7)})
	if _, err := w.step(ctx, st, late); err != nil { // resolves r1
		t.Fatal(err)
	}
	c := NewCollector(st, testConfig(w))
	if _, err := c.RotateNow(ctx); err != nil {
		t.Fatal(err)
	}
	w.now = w.now.Add(10 * time.Minute)
	rep, err := c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ImagesCopied != 1 || len(rep.Expired) != 0 {
		t.Errorf("first pass copied %d images, expired %v; want 1 and none", rep.ImagesCopied, rep.Expired)
	}
	for done := false; !done; {
		if done, err = w.step(ctx, st, late); err != nil {
			t.Fatal(err)
		}
	}
	if p := pointer(t, st, "acme", "late"); p.Root != r1 {
		t.Fatalf("late build wrote into %s, want %s", p.Root, r1)
	}
	w.now = w.now.Add(50 * time.Minute) // now exactly BuildTimeout after retirement
	rep, err = c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.RootID{r1}, rep.Expired); diff != "" {
		t.Errorf("expired (-want +got):\n%s", diff)
	}
	if p := pointer(t, st, "acme", "late"); p.Root != r2 {
		t.Errorf("late image points into %s after the settled pass, want %s", p.Root, r2)
	}
	mustCheck(t, w)
}

func TestDeleteAfterGraceUnlessAlarm(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	threeImages(w)
	if err := catalog.Delete(ctx, st, "zeta", "c"); err != nil {
		t.Fatal(err)
	}
	delete(w.live, "zeta/c")
	c := NewCollector(st, testConfig(w))
	if _, err := c.RotateNow(ctx); err != nil {
		t.Fatal(err)
	}
	w.now = w.now.Add(hour)
	if _, err := c.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if got := states(t, st)[r1]; got != store.RootExpired {
		t.Fatalf("root %s is %s, want expired", r1, got)
	}
	var r1Objects int
	var r1Bytes int64
	st.List(ctx, store.RootPrefix(r1), func(key string, size int64) error {
		if key != store.StateKey(r1) {
			r1Objects++
			r1Bytes += size
		}
		return nil
	})

	w.now = w.now.Add(47 * hour) // one hour short of grace
	if rep, err := c.Pass(ctx); err != nil || len(rep.Deleted) != 0 {
		t.Fatalf("pass before grace deleted %v (%v), want nothing", rep.Deleted, err)
	}
	if err := store.RaiseAlarm(ctx, st, r1, "acme/a", "0123"); err != nil {
		t.Fatal(err)
	}
	if err := store.RaiseAlarm(ctx, st, r1, "acme/b", "4567"); err != nil { // the first alarm is kept
		t.Fatal(err)
	}
	w.now = w.now.Add(2 * hour)
	rep, err := c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 0 || len(rep.Blocked) != 1 || rep.Blocked[0].Image != "acme/a" || rep.Blocked[0].Chunk != "0123" {
		t.Fatalf("pass with alarm: deleted %v, blocked %+v; want nothing deleted, blocked by acme/a chunk 0123", rep.Deleted, rep.Blocked)
	}
	if !strings.Contains(rep.String(), "clear-alarm "+string(r1)) {
		t.Errorf("report does not tell how to clear the alarm:\n%s", rep)
	}
	if err := store.ClearAlarm(ctx, st, r1); err != nil {
		t.Fatal(err)
	}
	rep, err = c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ObjectsFreed != r1Objects || rep.BytesFreed != r1Bytes || rep.PointersRemoved != 1 {
		t.Errorf("freed %d objects, %d bytes, %d pointers; want %d, %d, 1", rep.ObjectsFreed, rep.BytesFreed, rep.PointersRemoved, r1Objects, r1Bytes)
	}
	if diff := cmp.Diff([]store.RootID{r1}, rep.Deleted); diff != "" {
		t.Errorf("deleted (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[store.RootID]store.RootState{r2: store.RootActive}, states(t, st)); diff != "" {
		t.Errorf("states (-want +got):\n%s", diff)
	}
	if _, err := catalog.Lookup(ctx, st, "zeta", "c"); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("pointer of deleted image after its root went: %v, want ErrNoImage", err)
	}
	var left []string
	st.List(ctx, store.RootPrefix(r1), func(key string, _ int64) error { left = append(left, key); return nil })
	if len(left) != 0 {
		t.Errorf("objects left in deleted root: %q", left)
	}
	mustCheck(t, w)
}

func TestLivePointerIntoExpiredRootRaisesAlarm(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	w.buildNow("acme", "a", [][]byte{block(1)})
	old := pointer(t, st, "acme", "a")
	c := NewCollector(st, testConfig(w))
	c.RotateNow(ctx)
	w.now = w.now.Add(hour)
	if _, err := c.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	// Something puts the old pointer back (a restore, a lost race).
	if err := st.Put(ctx, store.ImageKey("acme", "a"), store.MarshalPointer(old)); err != nil {
		t.Fatal(err)
	}
	w.now = w.now.Add(49 * hour)
	rep, err := c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 0 {
		t.Fatalf("deleted %v although a live image points into it", rep.Deleted)
	}
	a, err := store.ReadAlarm(ctx, st, r1)
	if err != nil || a.Image != "acme/a" {
		t.Errorf("ReadAlarm = %+v, %v; want an alarm naming acme/a", a, err)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	threeImages(w)
	catalog.Delete(ctx, st, "zeta", "c")
	delete(w.live, "zeta/c")
	snapshot := func() map[string]string {
		out := map[string]string{}
		st.List(ctx, "", func(key string, _ int64) error {
			b, _ := st.Get(ctx, key, nil)
			out[key] = string(b)
			return nil
		})
		return out
	}
	cfg := testConfig(w)
	cfg.DryRun = true
	dry := NewCollector(st, cfg)
	real := NewCollector(st, testConfig(w))
	w.now = w.now.Add(1001 * hour) // rotation due
	for i, advance := range []time.Duration{0, hour, 48 * hour} {
		w.now = w.now.Add(advance)
		before := snapshot()
		plan, err := dry.Pass(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before, snapshot()); diff != "" {
			t.Fatalf("dry run %d changed the store (-before +after):\n%s", i, diff)
		}
		done, err := real.Pass(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(done.Stats, plan.Stats); diff != "" {
			t.Errorf("pass %d: dry-run stats differ from the real pass (-real +dry):\n%s", i, diff)
		}
		if done.Rotated != plan.Rotated || !cmp.Equal(done.Expired, plan.Expired) || !cmp.Equal(done.Deleted, plan.Deleted) {
			t.Errorf("pass %d: dry run planned rotate %q expire %v delete %v; real pass did %q %v %v",
				i, plan.Rotated, plan.Expired, plan.Deleted, done.Rotated, done.Expired, done.Deleted)
		}
	}
	mustCheck(t, w)
}

// A mount that resolved its image before copy-forward keeps reading the old
// root until the root is deleted; re-resolving finds the same chunk names
// in the new root.
func TestMountOfOldRoot(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	w.buildNow("acme", "a", [][]byte{block(1), block(2)})
	m, p, err := catalog.Resolve(ctx, st, w.kr, "acme", "a")
	if err != nil {
		t.Fatal(err)
	}
	read := func(root store.RootID) error {
		for i := range m.Names {
			ct, err := st.Get(ctx, store.ChunkKey(root, m.Names[i]), nil)
			if err != nil {
				return err
			}
			if _, err := chunk.Open(m.Ref(i), ct, nil); err != nil {
				return err
			}
		}
		return nil
	}
	c := NewCollector(st, testConfig(w))
	c.RotateNow(ctx)
	for _, step := range []struct {
		advance   time.Duration
		wantState store.RootState
	}{{0, store.RootRetired}, {hour, store.RootExpired}, {47 * hour, store.RootExpired}} {
		w.now = w.now.Add(step.advance)
		if _, err := c.Pass(ctx); err != nil {
			t.Fatal(err)
		}
		if got := states(t, st)[p.Root]; got != step.wantState {
			t.Fatalf("root %s is %s, want %s", p.Root, got, step.wantState)
		}
		if err := read(p.Root); err != nil {
			t.Fatalf("mount reading old root %s (%s): %v", p.Root, step.wantState, err)
		}
	}
	w.now = w.now.Add(2 * hour)
	if _, err := c.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if err := read(p.Root); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("reading deleted root = %v, want ErrNotFound", err)
	}
	_, np, err := catalog.Resolve(ctx, st, w.kr, "acme", "a")
	if err != nil || np.Root != r2 {
		t.Fatalf("re-resolved pointer %+v, %v; want root %s", np, err, r2)
	}
	if err := read(np.Root); err != nil {
		t.Errorf("reading re-resolved root: %v", err)
	}
}

func TestCorruptChunkIsNotCopied(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	w.buildNow("acme", "a", [][]byte{block(1), block(2)})
	p := pointer(t, st, "acme", "a")
	m, _, _ := catalog.Resolve(ctx, st, w.kr, "acme", "a")
	key := store.ChunkKey(r1, m.Names[1])
	ct, _ := st.Get(ctx, key, nil)
	ct[0] ^= 1
	st.Put(ctx, key, ct)
	c := NewCollector(st, testConfig(w))
	c.RotateNow(ctx)
	w.now = w.now.Add(2 * hour)
	_, err := c.Pass(ctx)
	if !errors.Is(err, chunk.ErrCorrupt) || !strings.Contains(err.Error(), m.Names[1].String()) {
		t.Errorf("Pass = %v, want chunk.ErrCorrupt naming chunk %s", err, m.Names[1])
	}
	if got := pointer(t, st, "acme", "a"); got != p {
		t.Errorf("pointer = %+v, want unchanged %+v", got, p)
	}
	if got := states(t, st)[r1]; got != store.RootRetired {
		t.Errorf("root %s is %s, want retired (it still holds a live image)", r1, got)
	}
	if _, err := st.Stat(ctx, store.ChunkKey(r2, m.Names[1])); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("corrupt chunk in new root: Stat = %v, want ErrNotFound", err)
	}
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	threeImages(w)
	reg := prometheus.NewRegistry()
	cfg := testConfig(w)
	cfg.Metrics = NewMetrics(reg)
	c := NewCollector(st, cfg)
	w.now = w.now.Add(1001 * hour)
	rep, err := c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, label string
		want        float64
	}{
		{"lode_gc_roots", "active", 1},
		{"lode_gc_roots", "retired", 1},
		{"lode_gc_live_images", "", 3},
		{"lode_gc_copied_bytes_total", "", float64(rep.BytesCopied)},
		{"lode_gc_copied_objects_total", "", 6 + 3},
		{"lode_gc_passes_total", "ok", 1},
	} {
		if got := metricValue(t, reg, tt.name, tt.label); got != tt.want {
			t.Errorf("metric %s{%s} = %v, want %v", tt.name, tt.label, got, tt.want)
		}
	}
	if rep.BytesCopied == 0 {
		t.Error("BytesCopied = 0")
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{Grace: -1, Concurrency: -2}.Validate()
	for _, want := range []string{"grace", "concurrency"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to name %s", err, want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
	if _, err := NewCollector(mem.New(), Config{BuildTimeout: -1}).Pass(context.Background()); err == nil {
		t.Error("Pass with a negative build timeout succeeded")
	}
}

// metricValue returns the value of the sample of name whose only label has
// value label ("" for an unlabelled metric).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() != label {
				continue
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}
