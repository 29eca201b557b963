package worker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/store"
)

// overlapStore holds each read of a key that matches hold until a read of
// a key that matches wait has started (or a few seconds pass), and records
// whether it came: it tells whether Open asks for the two together.
type overlapStore struct {
	store.Store
	hold, wait func(key string) bool

	once    sync.Once
	started chan struct{}
	mu      sync.Mutex
	overlap []bool // one per held read: the other read had started
}

func (s *overlapStore) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	if s.wait(key) {
		s.once.Do(func() { close(s.started) })
	}
	if s.hold(key) {
		ok := false
		select {
		case <-s.started:
			ok = true
		case <-time.After(3 * time.Second): // the other read comes after this one ends: in series
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		s.mu.Lock()
		s.overlap = append(s.overlap, ok)
		s.mu.Unlock()
	}
	return s.Store.Get(ctx, key, dst)
}

// TestOpenReadsMetadataTogether checks that Open reads the image's
// manifest, its learned profile and its root's state together once the
// pointer names them, not one after another: each of those reads is held
// until the other has started, which in series it never does.
func TestOpenReadsMetadataTogether(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 1, 4, 64<<10)
	manifestKey := store.ManifestKey(img.Ptr.Root, img.Ptr.Manifest)
	stateKey := store.StateKey(img.Ptr.Root)
	profiles := store.ProfilesPrefix(img.Ptr.Root, img.Ptr.Manifest)
	is := func(k string) func(string) bool { return func(key string) bool { return key == k } }
	for _, tc := range []struct {
		name       string
		hold, wait func(string) bool
	}{
		{"state with manifest", is(manifestKey), is(stateKey)},
		{"profile with manifest", is(manifestKey), func(k string) bool { return strings.HasPrefix(k, profiles) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &overlapStore{Store: w.St, hold: tc.hold, wait: tc.wait, started: make(chan struct{})}
			im, err := Open(context.Background(), st, w.Kr, "default", "demo", testOptions(t.TempDir()), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			im.Close()
			st.mu.Lock()
			defer st.mu.Unlock()
			if len(st.overlap) == 0 {
				t.Fatal("Open never read the held key")
			}
			for i, ok := range st.overlap {
				if !ok {
					t.Errorf("held read %d: the other read started only after it ended (in series)", i)
				}
			}
		})
	}
}
