package worker

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/store"
)

// TestExpiredRootReadAlarm: in the one-shot modes (worker.Open: mount, run,
// serve-nbd, serve-vhost, vm) and in the daemon, every chunk read of an
// image whose root is expired is counted, warns naming tenant, image and
// chunk at most once per AlarmEvery per image, and writes the alarm marker
// that stops the root's deletion. An image in an active root raises
// nothing.
func TestExpiredRootReadAlarm(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 1, 8, 64<<10)
	ctx := context.Background()
	chunks := 0
	for _, n := range img.M.Names {
		if !n.IsZero() {
			chunks++
		}
	}
	expire := func(t *testing.T, root store.RootID) {
		t.Helper()
		if err := store.WriteRoot(ctx, w.St, store.RootInfo{ID: root, State: store.RootExpired, Since: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	// readAll reads the whole image twice, one chunk a read.
	readAll := func(t *testing.T, read func([]byte, int64) error) {
		t.Helper()
		buf := make([]byte, img.M.ChunkSize)
		for range 2 {
			for i := range img.M.Names {
				off, n := img.ChunkRange(i)
				if err := read(buf[:n], off); err != nil {
					t.Fatalf("reading chunk %d: %v", i, err)
				}
			}
		}
	}
	check := func(t *testing.T, log string, reads float64, wantAlarm bool) {
		t.Helper()
		warnings := strings.Count(log, "read of a chunk from an expired root")
		al, err := store.ReadAlarm(ctx, w.St, img.Ptr.Root)
		if !wantAlarm {
			if warnings != 0 || reads != 0 || err == nil {
				t.Fatalf("active root: %d warnings, %v reads counted, alarm %+v (%v); want none\n%s", warnings, reads, al, err, log)
			}
			return
		}
		if warnings != 1 {
			t.Errorf("%d warnings for %d reads within a minute, want 1 (rate-limited per image)\n%s", warnings, 2*chunks, log)
		}
		for _, want := range []string{"tenant=default", "image=demo", "chunk=" + img.M.Names[firstChunk(img)].String(), "root=" + string(img.Ptr.Root)} {
			if !strings.Contains(log, want) {
				t.Errorf("the warning does not name %s:\n%s", want, log)
			}
		}
		if reads != float64(2*chunks) {
			t.Errorf("lode_agent_expired_root_reads_total = %v, want %d (every chunk read)", reads, 2*chunks)
		}
		if err != nil {
			t.Fatalf("no alarm marker on the expired root: %v", err)
		}
		if al.Image != "default/demo" || al.Chunk != img.M.Names[firstChunk(img)].String() {
			t.Errorf("alarm %+v, want image default/demo and the first chunk read", al)
		}
	}

	for _, expired := range []bool{false, true} {
		name := map[bool]string{false: "active root", true: "expired root"}[expired]
		t.Run("one-shot/"+name, func(t *testing.T) {
			store.ClearAlarm(ctx, w.St, img.Ptr.Root)
			store.WriteRoot(ctx, w.St, store.RootInfo{ID: img.Ptr.Root, State: store.RootActive, Since: time.Now()})
			if expired {
				expire(t, img.Ptr.Root)
			}
			var logBuf syncBuffer
			reg := prometheus.NewRegistry()
			im, err := Open(ctx, w.St, w.Kr, "default", "demo", testOptions(t.TempDir()), reg,
				slog.New(slog.NewTextHandler(&logBuf, nil)))
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, func(b []byte, off int64) error { _, err := im.Image.ReadAt(ctx, b, off); return err })
			reads := gatherCounter(t, reg, "lode_agent_expired_root_reads_total")
			im.Close() // waits for the warning and the alarm write
			check(t, logBuf.String(), reads, expired)
		})
		t.Run("daemon/"+name, func(t *testing.T) {
			store.ClearAlarm(ctx, w.St, img.Ptr.Root)
			store.WriteRoot(ctx, w.St, store.RootInfo{ID: img.Ptr.Root, State: store.RootActive, Since: time.Now()})
			var logBuf syncBuffer
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
			defer s.close()
			if expired {
				// Expired while served: the watch re-reads the state.
				expire(t, img.Ptr.Root)
				s.watch.mu.Lock()
				s.watch.checked = time.Time{}
				s.watch.mu.Unlock()
				s.watch.OnRead(0, -1) // starts the state re-read
				waitFor(t, func() bool {
					s.watch.mu.Lock()
					defer s.watch.mu.Unlock()
					return s.watch.state == store.RootExpired
				})
			}
			readAll(t, func(b []byte, off int64) error { _, err := s.im.ReadAt(ctx, b, off); return err })
			s.close()
			log := logBuf.String()
			// The daemon's open-time check also warns ("image is read from
			// an expired root"); only the read warnings are counted here.
			check(t, log, testCounter(t, d, "lode_agent_expired_root_reads_total"), expired)
		})
	}
}

func firstChunk(img *imagetest.Image) int {
	for i, n := range img.M.Names {
		if !n.IsZero() {
			return i
		}
	}
	return -1
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 10 s")
}

func gatherCounter(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].Counter.GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
