package agent_test

import (
	"context"
	"errors"
	"testing"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/imagetest"
)

// TestReadAfterAgentCloseFails checks Agent.Close's contract ("Images
// opened on the agent fail their reads afterwards") for chunks that the
// memory cache still holds: they must fail with ErrClosed too, so that a
// closed worker (kill the agent, remount) cannot keep serving through
// images it handed out.
//
// It failed when written: Image.ReadAt checked only the image's own flag and
// the memory-cache path never consulted the agent (fixed in f2c2a51).
func TestReadAfterAgentCloseFails(t *testing.T) {
	ctx := context.Background()
	w := imagetest.NewWorld(t, "a", "b")
	a := w.Build(t, "a", "app", 31, 2, relChunkSize)
	ag, err := agent.New(agent.Config{Mem: agent.NewMemCache(16 << 20), Tiers: []agent.Tier{agent.NewOrigin(w.St, a.Ptr.Root)}})
	if err != nil {
		t.Fatal(err)
	}
	im, err := ag.Open("a/app", a.M)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, relChunkSize)
	if _, err := im.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	ag.Close()
	if n, err := im.ReadAt(ctx, p, 0); n != 0 || !errors.Is(err, agent.ErrClosed) {
		t.Errorf("ReadAt of a cached chunk after Agent.Close = %d, %v; want 0 and ErrClosed", n, err)
	}
}
