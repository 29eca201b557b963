package worker

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/lodetest"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/store"
)

// syncBuffer is a test log or output written from several goroutines.
type syncBuffer = lodetest.SyncBuffer

// testOptions are the worker flags' defaults, scaled down for tests.
func testOptions(home string) Options {
	return Options{CacheDir: filepath.Join(home, "cache"), DiskBytes: 256 << 20, MemBytes: 64 << 20,
		FetchTimeout: 20 * time.Second, ReadAhead: 4, Fetches: 8, AllowStoreSecret: true}
}

// testDaemonConfig is a daemon over w's store in home, logging to log.
func testDaemonConfig(home string, w *imagetest.World, log *syncBuffer) DaemonConfig {
	return DaemonConfig{
		Socket: filepath.Join(home, "agent.sock"), StateDir: filepath.Join(home, "mounts"), Worker: testOptions(home),
		Store: w.St, Keyring: w.Kr, Tenant: "default",
		Log: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
}

// An image whose root expired raises the GC alarm and counts; when the GC
// repoints the image, the daemon follows it to the new root without a
// remount. No FUSE needed: the image is exported over NBD on a unix socket.
func TestDaemonExpiredRootAndRepoint(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 1, 8, 64<<10)
	st := w.St
	ctx := context.Background()
	var logBuf syncBuffer
	p, err := catalog.Lookup(ctx, st, "default", "demo")
	if err != nil {
		t.Fatal(err)
	}
	old := p.Root
	if err := store.WriteRoot(ctx, st, store.RootInfo{ID: old, State: store.RootExpired, Since: time.Now()}); err != nil {
		t.Fatal(err)
	}

	home := t.TempDir()
	d, err := NewDaemon(ctx, testDaemonConfig(home, w, &logBuf))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := d.startExport(ctx, ExportRequest{Image: "demo", Tenant: "default", Listen: "unix:" + filepath.Join(home, "nbd.sock")})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.exports[s.listen] = s
	d.mu.Unlock()

	if got := testCounter(t, d, "lode_agent_expired_root_opens_total"); got != 1 {
		t.Errorf("lode_agent_expired_root_opens_total = %v, want 1", got)
	}
	al, err := store.ReadAlarm(ctx, st, old)
	if err != nil {
		t.Fatalf("no alarm on the expired root %s: %v", old, err)
	}
	if al.Image != "default/demo" {
		t.Errorf("alarm names image %q, want default/demo", al.Image)
	}
	if log := logBuf.String(); !strings.Contains(log, "expired root") || !strings.Contains(log, "root="+string(old)) || !strings.Contains(log, "image=default/demo") {
		t.Errorf("no warning naming image and root in the log:\n%s", log)
	}

	// Copy forward into a new root and repoint, as the GC does, then
	// delete the old root's chunks.
	next := store.RootIDFor(store.RootNumber(old) + 1)
	var keys []string
	if err := st.List(ctx, store.RootPrefix(old), func(key string, _ int64) error { keys = append(keys, key); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		b, err := st.Get(ctx, k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Put(ctx, store.RootPrefix(next)+strings.TrimPrefix(k, store.RootPrefix(old)), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.WriteRoot(ctx, st, store.RootInfo{ID: next, State: store.RootActive, Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	p.Root = next
	if err := st.Put(ctx, store.ImageKey("default", "demo"), store.MarshalPointer(p)); err != nil {
		t.Fatal(err)
	}
	d.refresh(ctx)
	if got := s.attached(); len(got) != 2 || got[1] != next {
		t.Errorf("after the refresh the image reads from %v, want %s added", got, next)
	}
	for _, k := range keys {
		if strings.HasPrefix(k, store.ChunksPrefix(old)) {
			if err := st.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := img.Plain
	got := make([]byte, len(want))
	if _, err := s.im.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("reading the image after its old root's chunks were deleted: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the image read through the new root differs from the built ext4")
	}
	if got := testCounter(t, d, "lode_agent_image_repoints_total"); got != 1 {
		t.Errorf("lode_agent_image_repoints_total = %v, want 1", got)
	}
	// A second refresh changes nothing and raises nothing new.
	d.refresh(ctx)
	if got := testCounter(t, d, "lode_agent_expired_root_opens_total"); got != 1 {
		t.Errorf("after a second refresh lode_agent_expired_root_opens_total = %v, want 1", got)
	}
}

// testCounter reads one unlabelled metric from d's registry.
func testCounter(t *testing.T, d *Daemon, name string) float64 {
	t.Helper()
	mfs, err := d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			m := mf.Metric[0]
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// A running daemon writes its warm reserve (--warm-memory, at most the
// memory cache's budget) and shows it in lode_agent_warm_buffers; once it
// stops, the reserve is gone. 0 disables it.
func TestDaemonWarmReserve(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	for _, tc := range []struct {
		name        string
		warm, mem   int64
		wantBuffers float64
	}{
		{"4 MiB", 4 << 20, 64 << 20, 8},
		{"capped by the memory cache", 64 << 20, 2 << 20, 4},
		{"off", 0, 64 << 20, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			var logBuf syncBuffer
			c := testDaemonConfig(home, w, &logBuf)
			c.WarmMemory, c.Worker.MemBytes = tc.warm, tc.mem
			d, err := NewDaemon(context.Background(), c)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			ready, done := make(chan struct{}), make(chan error, 1)
			go func() { done <- d.Run(ctx, ready) }()
			<-ready
			deadline := time.Now().Add(10 * time.Second)
			for testCounter(t, d, "lode_agent_warm_buffers") < tc.wantBuffers && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // a reserve larger than asked would show by now
			if got := testCounter(t, d, "lode_agent_warm_buffers"); got != tc.wantBuffers {
				t.Errorf("lode_agent_warm_buffers = %v, want %v", got, tc.wantBuffers)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if n := agent.WarmBuffers(); n != 0 {
				t.Errorf("after the daemon stopped the reserve holds %d buffers", n)
			}
		})
	}
}

// A daemon taken over that waits for its signal (--after-takeover=wait)
// gives its warm reserve up at once, not when it exits.
func TestDaemonTakenOverDropsWarmReserve(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	home := t.TempDir()
	var logBuf syncBuffer
	c := testDaemonConfig(home, w, &logBuf)
	c.WarmMemory, c.AfterTakeover = 4<<20, "wait"
	d, err := NewDaemon(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- d.Run(ctx, ready) }()
	<-ready
	deadline := time.Now().Add(10 * time.Second)
	for agent.WarmBuffers() < 8 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := agent.WarmBuffers(); n != 8 {
		t.Fatalf("warm reserve holds %d buffers, want 8", n)
	}
	close(d.takenOver) // what handOver does once the new agent has everything
	deadline = time.Now().Add(5 * time.Second)
	for agent.WarmBuffers() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := agent.WarmBuffers(); n != 0 {
		t.Errorf("taken over and waiting for a signal, the daemon still holds %d warm buffers", n)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned before its signal: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// stateCounter counts reads of roots' STATE objects.
type stateCounter struct {
	store.Store
	mu    sync.Mutex
	reads int
}

func (c *stateCounter) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	if strings.HasSuffix(key, "/STATE") {
		c.mu.Lock()
		c.reads++
		c.mu.Unlock()
	}
	return c.Store.Get(ctx, key, dst)
}

func (c *stateCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

// TestDaemonOpenReadsRootStateOnce: opening an image reads its root's
// state once, for both the expired-root check and the root watch (it was
// read twice, one read after the other, on every cold mount's path), and
// an expired root is still reported by that one read.
func TestDaemonOpenReadsRootStateOnce(t *testing.T) {
	for _, state := range []store.RootState{store.RootActive, store.RootExpired} {
		t.Run(string(state), func(t *testing.T) {
			w := imagetest.NewWorld(t, "default")
			w.Build(t, "default", "demo", 1, 8, 64<<10)
			ctx := context.Background()
			p, err := catalog.Lookup(ctx, w.St, "default", "demo")
			if err != nil {
				t.Fatal(err)
			}
			if err := store.WriteRoot(ctx, w.St, store.RootInfo{ID: p.Root, State: state, Since: time.Now()}); err != nil {
				t.Fatal(err)
			}
			sc := &stateCounter{Store: w.St}
			home := t.TempDir()
			var logBuf syncBuffer
			cfg := testDaemonConfig(home, w, &logBuf)
			cfg.Store = sc
			d, err := NewDaemon(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			before := sc.count()
			s, err := d.open(ctx, "default", "demo")
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if got := sc.count() - before; got != 1 {
				t.Errorf("opening the image read its root's STATE %d times, want 1", got)
			}
			wantAlarms := 0.0
			if state == store.RootExpired {
				wantAlarms = 1
			}
			if got := testCounter(t, d, "lode_agent_expired_root_opens_total"); got != wantAlarms {
				t.Errorf("lode_agent_expired_root_opens_total = %v, want %v", got, wantAlarms)
			}
		})
	}
}
