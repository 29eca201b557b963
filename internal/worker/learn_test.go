package worker

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/profile"
)

// loads is lode_profile_loads_total{result} on d's registry.
func loads(t *testing.T, d *Daemon, result string) float64 {
	t.Helper()
	mfs, err := d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "lode_profile_loads_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.Counter.GetValue()
				}
			}
		}
	}
	return 0
}

// lode agent learns too: an export's start publishes the chunks it read
// when its image closes (the learning gate), and the next agent, on a
// fresh cache, prefetches them at open. A profile that does not open is
// ignored with a metric, and the start goes on.
func TestDaemonLearnsProfile(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	w.Build(t, "default", "demo", 1, 64, 64<<10)
	ctx := context.Background()
	m, p, err := catalog.Resolve(ctx, w.St, w.Kr, "default", "demo")
	if err != nil {
		t.Fatal(err)
	}
	var read []uint32
	for i := len(m.Names) - 1; i >= 0 && len(read) < 3; i-- {
		if !m.Names[i].IsZero() {
			read = append(read, uint32(i))
		}
	}
	export := func(home string, learn bool) (*Daemon, *served) {
		t.Helper()
		var logBuf syncBuffer
		c := testDaemonConfig(home, w, &logBuf)
		c.Worker.LearnProfile = learn
		c.Worker.ReadAhead = 0
		d, err := NewDaemon(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		s, err := d.startExport(ctx, ExportRequest{Image: "demo", Tenant: "default", Listen: "unix:" + filepath.Join(home, "nbd.sock")})
		if err != nil {
			t.Fatal(err)
		}
		return d, s
	}

	d, s := export(t.TempDir(), true)
	buf := make([]byte, 16)
	for _, i := range read {
		if _, err := s.im.ReadAt(ctx, buf, int64(i)*int64(m.ChunkSize)); err != nil {
			t.Fatal(err)
		}
	}
	s.learn.Learned(ctx) // the profile loads beside the start: wait for it
	if got := loads(t, d, profile.LoadNone); got != 1 {
		t.Errorf("loads{none} = %v, want 1", got)
	}
	s.close() // the start is over: its read set is published
	lp, err := profile.Load(ctx, w.St, profile.Image{Root: p.Root, ID: p.Manifest, M: m})
	if err != nil || lp == nil || !slices.Equal(lp.Chunks, read) {
		t.Fatalf("learned profile = %+v, %v; want chunks %v", lp, err, read)
	}

	d2, s2 := export(t.TempDir(), false)
	want := int64(len(profile.Merge(read, m.Hints)))
	for deadline := time.Now().Add(30 * time.Second); s2.im.Stats().Prefetches < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s2.im.Stats().Prefetches; got != want {
		t.Errorf("the second agent prefetched %d chunks, want %d", got, want)
	}
	s2.learn.Learned(ctx)
	if got := loads(t, d2, profile.LoadFound); got != 1 {
		t.Errorf("loads{found} = %v, want 1", got)
	}
	s2.close()

	// A damaged profile: ignored, counted, the start works.
	if err := w.St.Put(ctx, profile.MergedKey(p.Root, p.Manifest), []byte("LODEPRF\x00\x01\x00damaged")); err != nil {
		t.Fatal(err)
	}
	d3, s3 := export(t.TempDir(), false)
	if _, err := s3.im.ReadAt(ctx, buf, int64(read[0])*int64(m.ChunkSize)); err != nil {
		t.Fatalf("reading with a damaged profile: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); loads(t, d3, profile.LoadIgnored) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := loads(t, d3, profile.LoadIgnored); got != 1 {
		t.Errorf("loads{ignored} = %v, want 1", got)
	}
	s3.close()
}
