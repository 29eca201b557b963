package agent_test

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
)

// leakCounts returns the goroutines and open file descriptors of the
// process.
func leakCounts(t testing.TB) (goroutines, fds int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return runtime.NumGoroutine(), len(ents)
}

// checkNoLeak waits up to 10 s for the goroutine and fd counts to come back
// within tol of the baseline, then reports what is left.
func checkNoLeak(t testing.TB, what string, g0, f0, tol int) {
	t.Helper()
	var g, f int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		g, f = leakCounts(t)
		if (g <= g0+tol && f <= f0+tol) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("leak check %s: goroutines %d -> %d, fds %d -> %d", what, g0, g, f0, f)
	if g > g0+tol {
		buf := make([]byte, 1<<20)
		t.Errorf("%s: %d goroutines after, %d before (tolerance %d)\n%s", what, g, g0, tol, buf[:runtime.Stack(buf, true)])
	}
	if f > f0+tol {
		t.Errorf("%s: %d open fds after, %d before (tolerance %d)", what, f, f0, tol)
	}
}

// TestNoLeakOpenClose opens, reads and closes 50 images on one agent (disk
// cache and origin tiers, read-ahead on), then creates and closes 20
// agents: goroutines and file descriptors return to where they were.
func TestNoLeakOpenClose(t *testing.T) {
	ctx := context.Background()
	w := newRelWorld(t)
	a := w.build(t, "a", "app", 21, 4)
	newAgent := func() *agent.Agent {
		disk, err := agent.NewDiskCache(t.TempDir(), 64<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := agent.DefaultConfig()
		cfg.Mem = agent.NewMemCache(1 << 20)
		cfg.Tiers = []agent.Tier{disk, agent.NewOrigin(w.st, a.ptr.Root)}
		ag, err := agent.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return ag
	}
	ag := newAgent()
	g0, f0 := leakCounts(t)
	p := make([]byte, 3*relChunkSize)
	for i := range 50 {
		im, err := ag.Open("a/app", a.m)
		if err != nil {
			t.Fatal(err)
		}
		off := int64(i%4) * relChunkSize
		if n, err := im.ReadAt(ctx, p, off); err != nil || !bytes.Equal(p[:n], a.plain[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
		go im.Prefetch(ctx, []uint32{0, 1, 2, 3, 4, 5}, 2) // ends when the image closes
		if err := im.Close(); err != nil {
			t.Fatal(err)
		}
	}
	checkNoLeak(t, "50 images opened, read and closed", g0, f0, 2)
	ag.Close()

	g0, f0 = leakCounts(t)
	for range 20 {
		ag := newAgent()
		im, err := ag.Open("a/app", a.m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := im.ReadAt(ctx, p, 0); err != nil {
			t.Fatal(err)
		}
		ag.Close()
	}
	checkNoLeak(t, "20 agents created and closed", g0, f0, 2)
}
