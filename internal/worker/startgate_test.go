package worker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/imagetest"
)

// TestStartGateHoldsFirstReads: a daemon export keeps its start slot after
// the export is up, while its first reads go on (a second start is refused
// with ErrTooManyStarts), and frees it once they are over (the next start is
// admitted). On main the slot was freed as soon as the listener was up.
func TestStartGateHoldsFirstReads(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 1, 8, 64<<10)
	ctx := context.Background()
	var logBuf syncBuffer
	home := t.TempDir()
	cfg := testDaemonConfig(home, w, &logBuf)
	cfg.MaxStarts, cfg.StartWait, cfg.StartWindow = 1, 10*time.Millisecond, time.Minute
	d, err := NewDaemon(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	export := func(i int) (*served, error) {
		return d.startExport(ctx, ExportRequest{Image: "demo", Tenant: "default",
			Listen: "unix:" + filepath.Join(home, fmt.Sprintf("nbd%d.sock", i))})
	}
	s1, err := export(1)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.close()
	if _, err := export(2); !errors.Is(err, agent.ErrTooManyStarts) {
		t.Fatalf("a second start while the first has not read yet = %v, want ErrTooManyStarts", err)
	}
	// The first start's reads: while they go on, the slot stays taken.
	buf := make([]byte, img.M.ChunkSize)
	for i := range img.M.Names {
		off, n := img.ChunkRange(i)
		if _, err := s1.im.ReadAt(ctx, buf[:n], off); err != nil {
			t.Fatal(err)
		}
		if i == len(img.M.Names)/2 {
			if _, err := export(3); !errors.Is(err, agent.ErrTooManyStarts) {
				t.Fatalf("a second start during the first's reads = %v, want ErrTooManyStarts", err)
			}
		}
	}
	// Reads over: the slot is freed after the quiet second.
	deadline := time.Now().Add(20 * time.Second)
	for d.admit.InFlight() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the start slot was not freed after the first reads ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s4, err := export(4)
	if err != nil {
		t.Fatalf("a start after the first one's reads ended = %v, want admitted", err)
	}
	s4.close()
}

// TestStartGateRelease: Hold frees the slot at the first exec, at the end
// of the window, or when the image is closed, whichever comes first.
func TestStartGateRelease(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 1, 2, 64<<10)
	st, err := NewStack(context.Background(), testOptions(t.TempDir()), agent.NewOrigin(w.St, img.Ptr.Root), nil, nil, Parts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []string{"first exec", "window", "image closed"} {
		t.Run(tc, func(t *testing.T) {
			im, err := st.Agent.Open("default/demo", img.M)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			released := make(chan struct{})
			execd := make(chan struct{})
			g := agent.StartGate{Window: time.Hour, Quiet: time.Hour}
			switch tc {
			case "first exec":
				close(execd)
			case "window":
				g.Window = time.Millisecond
			case "image closed":
				im.Close()
			}
			g.Hold(func() { close(released) }, im, execd)
			select {
			case <-released:
			case <-time.After(20 * time.Second):
				t.Fatalf("slot not released on %s", tc)
			}
		})
	}
}
