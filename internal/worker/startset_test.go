package worker

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/trace"
)

// slowStore adds a round trip's delay to every read of the origin.
type slowStore struct {
	store.Store
	delay time.Duration
}

func (s slowStore) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Store.Get(ctx, key, dst)
}

// TestStartSetCutsSerialFetches starts python3 cold from the Debian image,
// mounted lazily over an origin 5 ms away, once ignoring the image's
// build-time start set and once prefetching it, and counts from the fetch
// trace the fetches the start made one after another before its output:
// with the start set there must be fewer (the count, not the time).
func TestStartSetCutsSerialFetches(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Loop, lodetest.Tool("chroot"))
	tarball := lodetest.DebianRootfs(t)
	w := imagetest.NewWorld(t, "default")
	ctx := context.Background()
	if _, err := build.Build(ctx, w.St, w.Kr, w.Kr.StoreSecret(), build.Options{Source: "rootfs:" + tarball,
		Tenant: "default", Name: "deb", TempDir: t.TempDir(), StartFiles: []string{"/usr/bin/python3"}}); err != nil {
		t.Fatal(err)
	}
	start := func(useHints bool) trace.Analysis {
		home := t.TempDir()
		o := testOptions(home)
		o.Trace = filepath.Join(home, "trace.jsonl")
		img, err := Open(ctx, slowStore{w.St, 5 * time.Millisecond}, w.Kr, "default", "deb", o, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if len(img.Manifest.Hints) == 0 {
			t.Fatal("the build stored no start set")
		}
		if !useHints {
			img.Manifest.Hints = nil
		}
		m, err := img.Mount(ctx, filepath.Join(home, "mnt"), filepath.Join(home, "state"), 16, FillOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("chroot", filepath.Join(home, "mnt"), "/usr/bin/python3", "-c", "print(6*7)").CombinedOutput()
		img.Trace.Mark("exit")
		m.Close()
		if err != nil || strings.TrimSpace(string(out)) != "42" {
			t.Fatalf("python3 in the image: %v, %q", err, out)
		}
		img.Close()
		f, err := os.Open(o.Trace)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		evs, err := trace.Parse(f)
		if err != nil {
			t.Fatal(err)
		}
		return trace.Analyze(evs, "exit")
	}
	without := start(false)
	with := start(true)
	t.Logf("serial fetches before the output: %d without the start set (%d fetches), %d with it (%d fetches, %d prefetched)",
		len(without.Chain), len(without.Fetches), len(with.Chain), len(with.Fetches), with.ByWhy[trace.WhyPrefetch])
	if with.ByWhy[trace.WhyPrefetch] == 0 {
		t.Errorf("no prefetch in the trace of the start with the start set")
	}
	if len(with.Chain) >= len(without.Chain) {
		t.Errorf("serial chain %d with the start set, %d without: want fewer with it", len(with.Chain), len(without.Chain))
	}
}
