package catalog_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// countingStore counts the store reads a resolver makes, by kind, and can
// fail them or hold them until released.
type countingStore struct {
	store.Store
	pointers, manifests atomic.Int64
	fail                atomic.Bool
	gate                chan struct{} // when not nil, every Get waits for it to close
}

var errDown = errors.New("store down")

func (s *countingStore) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	if strings.HasPrefix(key, "images/") {
		s.pointers.Add(1)
	} else {
		s.manifests.Add(1)
	}
	if s.gate != nil {
		<-s.gate
	}
	if s.fail.Load() {
		return nil, errDown
	}
	return s.Store.Get(ctx, key, dst)
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestResolverCaches(t *testing.T) {
	ctx := context.Background()
	type step struct {
		advance  time.Duration
		rebuild  bool // point the image at a new manifest before resolving
		wantP    int64
		wantM    int64
		wantSize int // chunks of the manifest resolved
	}
	tests := []struct {
		name  string
		ttl   time.Duration
		steps []step
	}{
		{"within the TTL nothing is read again", time.Second, []step{
			{wantP: 1, wantM: 1, wantSize: 2},
			{advance: 500 * time.Millisecond, wantP: 1, wantM: 1, wantSize: 2},
		}},
		{"a rebuild within the TTL is not seen yet", time.Second, []step{
			{wantP: 1, wantM: 1, wantSize: 2},
			{rebuild: true, wantP: 1, wantM: 1, wantSize: 2},
		}},
		{"past MaxStale the pointer is read again, the same manifest is not", time.Second, []step{
			{wantP: 1, wantM: 1, wantSize: 2},
			{advance: time.Minute, wantP: 2, wantM: 1, wantSize: 2},
		}},
		{"past MaxStale a rebuild is seen", time.Second, []step{
			{wantP: 1, wantM: 1, wantSize: 2},
			{advance: time.Minute, rebuild: true, wantP: 2, wantM: 2, wantSize: 3},
		}},
		{"a negative TTL reads the pointer every time", -1, []step{
			{wantP: 1, wantM: 1, wantSize: 2},
			{wantP: 2, wantM: 1, wantSize: 2},
			{rebuild: true, wantP: 3, wantM: 2, wantSize: 3},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &countingStore{Store: mem.New()}
			kr := keyring(t, "a")
			put(t, st.Store, kr, "a", "app", []byte{1, 2}, true)
			clk := &clock{t: time.Unix(1800000000, 0)}
			r := catalog.NewResolver(st, kr, catalog.ResolverConfig{PointerTTL: tt.ttl, MaxStale: 30 * time.Second, Now: clk.now})
			for i, s := range tt.steps {
				clk.add(s.advance)
				if s.rebuild {
					put(t, st.Store, kr, "a", "app", []byte{1, 2, 3}, true)
				}
				m, p, err := r.Resolve(ctx, "a", "app")
				if err != nil {
					t.Fatalf("step %d: Resolve: %v", i, err)
				}
				if len(m.Names) != s.wantSize || p.Root != root {
					t.Errorf("step %d: resolved %d chunks in %s, want %d in %s", i, len(m.Names), p.Root, s.wantSize, root)
				}
				if got, got2 := st.pointers.Load(), st.manifests.Load(); got != s.wantP || got2 != s.wantM {
					t.Errorf("step %d: store reads: %d pointers, %d manifests; want %d, %d", i, got, got2, s.wantP, s.wantM)
				}
			}
		})
	}
}

// Between PointerTTL and MaxStale a start uses the pointer it has and one
// background read refreshes it; the start after that sees the new build.
func TestResolverStaleWhileRevalidate(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{Store: mem.New()}
	kr := keyring(t, "a")
	put(t, st.Store, kr, "a", "app", []byte{1, 2}, true)
	clk := &clock{t: time.Unix(1800000000, 0)}
	r := catalog.NewResolver(st, kr, catalog.ResolverConfig{PointerTTL: time.Second, MaxStale: time.Minute, Now: clk.now})
	if _, _, err := r.Resolve(ctx, "a", "app"); err != nil {
		t.Fatal(err)
	}
	put(t, st.Store, kr, "a", "app", []byte{1, 2, 3}, true)
	clk.add(5 * time.Second)
	m, _, err := r.Resolve(ctx, "a", "app")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Names) != 2 {
		t.Errorf("stale resolve: %d chunks, want the old manifest's 2", len(m.Names))
	}
	deadline := time.Now().Add(10 * time.Second)
	for st.pointers.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for {
		m, _, err = r.Resolve(ctx, "a", "app")
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Names) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if len(m.Names) != 3 {
		t.Errorf("after the background refresh: %d chunks, want the new manifest's 3", len(m.Names))
	}
	s := r.Stats()
	if s.PointerReads != 2 || s.PointerStale < 1 || s.ManifestReads != 2 {
		t.Errorf("stats = %+v, want 2 pointer reads, ≥ 1 stale use, 2 manifest reads", s)
	}
}

// Concurrent resolves of an image nobody resolved yet share one read of the
// pointer and one of the manifest.
func TestResolverSingleFlight(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{Store: mem.New(), gate: make(chan struct{})}
	kr := keyring(t, "a")
	put(t, st.Store, kr, "a", "app", []byte{1, 2}, true)
	r := catalog.NewResolver(st, kr, catalog.ResolverConfig{})
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := r.Resolve(ctx, "a", "app")
			errs <- err
		}()
	}
	for st.pointers.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the others join the flight
	close(st.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if p, m := st.pointers.Load(), st.manifests.Load(); p != 1 || m != 1 {
		t.Errorf("%d concurrent resolves read %d pointers and %d manifests, want 1 and 1", n, p, m)
	}
}

func TestResolverErrors(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{Store: mem.New()}
	kr := keyring(t, "a", "b")
	put(t, st.Store, kr, "a", "app", []byte{1, 2}, true)
	clk := &clock{t: time.Unix(1800000000, 0)}
	r := catalog.NewResolver(st, kr, catalog.ResolverConfig{PointerTTL: time.Second, MaxStale: 2 * time.Second, Now: clk.now})

	if _, _, err := r.Resolve(ctx, "a", "nope"); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("missing image: %v, want ErrNoImage", err)
	}
	// Tenant b's pointer naming a's manifest: a's opened manifest is cached,
	// but b reads and opens its own, which fails with b's key.
	if _, _, err := r.Resolve(ctx, "a", "app"); err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Put(ctx, store.ImageKey("b", "stolen"), mustGet(t, st.Store, store.ImageKey("a", "app"))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Resolve(ctx, "b", "stolen"); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("b resolving a's manifest: %v, want ErrWrongKey", err)
	}
	// The store goes down: an expired pointer is used rather than failing.
	clk.add(time.Minute)
	st.fail.Store(true)
	if m, _, err := r.Resolve(ctx, "a", "app"); err != nil || len(m.Names) != 2 {
		t.Errorf("store down, expired pointer: %v, %v; want the cached image", m, err)
	}
	if s := r.Stats(); s.StaleOnError != 1 {
		t.Errorf("StaleOnError = %d, want 1", s.StaleOnError)
	}
	// An image never resolved cannot be served from nothing.
	if _, _, err := r.Resolve(ctx, "b", "other"); !errors.Is(err, errDown) {
		t.Errorf("store down, unknown image: %v, want the store's error", err)
	}
	// A delete is seen once the pointer is read again.
	st.fail.Store(false)
	if err := catalog.Delete(ctx, st.Store, "a", "app"); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Minute)
	if _, _, err := r.Resolve(ctx, "a", "app"); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("deleted image: %v, want ErrNoImage", err)
	}
}

// Manifests are evicted least recently used past the byte budget.
func TestResolverManifestBudget(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{Store: mem.New()}
	kr := keyring(t, "a")
	for i, name := range []string{"one", "two", "three"} {
		put(t, st.Store, kr, "a", name, []byte{byte(i + 1), 9}, true)
	}
	// Room for two small manifests (each about 640 bytes).
	r := catalog.NewResolver(st, kr, catalog.ResolverConfig{PointerTTL: -1, ManifestBytes: 1400})
	for _, name := range []string{"one", "two", "one", "three", "one", "two"} {
		if _, _, err := r.Resolve(ctx, "a", name); err != nil {
			t.Fatal(err)
		}
	}
	// one, two (reads 1, 2); one hit; three evicts two (3); one hit; two evicts three (4).
	if got := st.manifests.Load(); got != 4 {
		t.Errorf("manifest reads = %d, want 4", got)
	}
}
