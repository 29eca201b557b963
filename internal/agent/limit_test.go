package agent

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// gateTier blocks every Fetch until release is closed and records the
// highest number of Fetch calls it saw at once.
type gateTier struct {
	release      chan struct{}
	now, maxSeen atomic.Int64
	calls        atomic.Int64
}

func (g *gateTier) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	g.calls.Add(1)
	cur := g.now.Add(1)
	defer g.now.Add(-1)
	for {
		m := g.maxSeen.Load()
		if cur <= m || g.maxSeen.CompareAndSwap(m, cur) {
			break
		}
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return nil, store.ErrNotFound
}
func (g *gateTier) Fill(context.Context, chunk.Name, []byte) error { return nil }
func (g *gateTier) Name() string                                   { return "origin" }

func TestLimitBoundsConcurrentFetches(t *testing.T) {
	g := &gateTier{release: make(chan struct{})}
	l := Limit(g, 3)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Fetch(context.Background(), chunk.Name{byte(i)}, nil)
		}()
	}
	// Wait until the limit is reached, then let everyone through.
	for deadline := time.Now().Add(10 * time.Second); g.now.Load() < 3 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	wg.Wait()
	if got := g.maxSeen.Load(); got != 3 {
		t.Errorf("max concurrent fetches = %d, want 3", got)
	}
	if got := g.calls.Load(); got != 20 {
		t.Errorf("fetches = %d, want 20", got)
	}
	if Limit(g, 0) != Tier(g) {
		t.Error("Limit(t, 0) should return t itself")
	}
}

func TestLimitHonoursContext(t *testing.T) {
	g := &gateTier{release: make(chan struct{})}
	defer close(g.release)
	l := Limit(g, 1)
	go l.Fetch(context.Background(), chunk.Name{1}, nil) // holds the only slot
	for g.now.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Fetch(ctx, chunk.Name{2}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch while the slot is held = %v, want DeadlineExceeded", err)
	}
	if g.calls.Load() != 1 {
		t.Errorf("the waiting call reached the tier")
	}
}

func TestRateLimitRefusesPastDeadline(t *testing.T) {
	g := &gateTier{release: make(chan struct{})}
	close(g.release)
	r := RateLimit(g, 1, 2) // two at once, then one per second
	for i := 0; i < 2; i++ {
		if _, err := r.Fetch(context.Background(), chunk.Name{byte(i)}, nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("burst fetch %d = %v, want the tier's own answer", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := r.Fetch(ctx, chunk.Name{9}, nil)
	if !errors.Is(err, ErrThrottled) {
		t.Fatalf("fetch past the burst with a short deadline = %v, want ErrThrottled", err)
	}
	if got := g.calls.Load(); got != 2 {
		t.Errorf("tier saw %d fetches, want 2", got)
	}
	if RateLimit(g, 0, 1) != Tier(g) {
		t.Error("RateLimit(t, 0, …) should return t itself")
	}
}

func TestAdmission(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	a := NewAdmission(2, 30*time.Millisecond, m)
	r1, err := a.Acquire(context.Background(), "t/a")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := a.Acquire(context.Background(), "t/b")
	if err != nil {
		t.Fatal(err)
	}
	if a.InFlight() != 2 {
		t.Fatalf("InFlight = %d, want 2", a.InFlight())
	}
	_, err = a.Acquire(context.Background(), "t/c")
	if !errors.Is(err, ErrTooManyStarts) {
		t.Fatalf("third Acquire = %v, want ErrTooManyStarts", err)
	}
	if got := metricValue(t, m.startsRejected); got != 1 {
		t.Errorf("starts rejected = %v, want 1", got)
	}
	// A slot freed while a start waits admits it.
	done := make(chan error, 1)
	go func() {
		r, err := acquireLong(a)
		if err == nil {
			r()
		}
		done <- err
	}()
	r1()
	r1() // release is idempotent
	if err := <-done; err != nil {
		t.Fatalf("Acquire after a release = %v", err)
	}
	r2()
	if a.InFlight() != 0 {
		t.Errorf("InFlight after releases = %d, want 0", a.InFlight())
	}
	if got := metricValue(t, m.startsInFlight); got != 0 {
		t.Errorf("starts in flight gauge = %v, want 0", got)
	}
	var none *Admission
	if r, err := none.Acquire(context.Background(), "x"); err != nil || r == nil {
		t.Errorf("nil Admission Acquire = %v", err)
	}
}

// acquireLong acquires a slot of a (same slots) with a longer wait.
func acquireLong(a *Admission) (func(), error) {
	a2 := *a
	a2.wait = 5 * time.Second
	return a2.Acquire(context.Background(), "t/waiter")
}

// flakyTier fails its first n fetches with err, then misses.
type flakyTier struct {
	n     int
	err   error
	calls atomic.Int64
}

func (f *flakyTier) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if int(f.calls.Add(1)) <= f.n {
		return nil, f.err
	}
	return []byte("ok"), nil
}
func (f *flakyTier) Fill(context.Context, chunk.Name, []byte) error { return nil }
func (f *flakyTier) Name() string                                   { return "origin" }

func TestRetry(t *testing.T) {
	transientErr := errors.New("connection reset")
	tests := []struct {
		name      string
		fails     int
		err       error
		attempts  int
		wantCalls int64
		wantErr   error
	}{
		{"transient error retried", 2, transientErr, 3, 3, nil},
		{"gives up after attempts", 5, transientErr, 3, 3, transientErr},
		{"miss not retried", 5, store.ErrNotFound, 3, 1, store.ErrNotFound},
		{"corrupt not retried", 5, &chunk.CorruptError{Reason: "x"}, 3, 1, chunk.ErrCorrupt},
		{"throttled not retried", 5, ErrThrottled, 3, 1, ErrThrottled},
		{"one attempt is no retry", 5, transientErr, 1, 1, transientErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &flakyTier{n: tc.fails, err: tc.err}
			b, err := Retry(f, tc.attempts, time.Millisecond).Fetch(context.Background(), chunk.Name{1}, nil)
			if tc.wantErr == nil && (err != nil || string(b) != "ok") {
				t.Errorf("Fetch = %q, %v; want ok", b, err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Fetch error = %v, want %v", err, tc.wantErr)
			}
			if got := f.calls.Load(); got != tc.wantCalls {
				t.Errorf("tier saw %d fetches, want %d", got, tc.wantCalls)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &flakyTier{n: 5, err: transientErr}
	if _, err := Retry(f, 3, time.Hour).Fetch(ctx, chunk.Name{1}, nil); err == nil || f.calls.Load() != 1 {
		t.Errorf("Fetch with a cancelled context = %v after %d calls, want an error after 1", err, f.calls.Load())
	}
}
