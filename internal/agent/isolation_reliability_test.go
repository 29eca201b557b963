package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// TestTenantIsolation checks the threat model of docs/reliability.md for an
// attacker who can read the whole store (tenant b, or anyone with the
// bucket): they cannot open a's manifest, find a's chunk keys in any stored
// object, read a's chunks from the public part of a's manifest, or confirm
// that a known plaintext chunk is stored without the store secret.
func TestTenantIsolation(t *testing.T) {
	ctx := context.Background()
	w := imagetest.NewWorld(t, "a", "b")
	a := w.Build(t, "a", "app", 11, 4, relChunkSize)
	w.Build(t, "b", "other", 12, 2, relChunkSize)
	sealed, err := w.St.Get(ctx, store.ManifestKey(a.Ptr.Root, a.Ptr.Manifest), nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("b's key cannot open a's manifest", func(t *testing.T) {
		// b reads a's sealed bytes and presents them as its own.
		if m, err := manifest.Open(ctx, sealed, "b", w.Kr); m != nil || !errors.Is(err, manifest.ErrWrongKey) {
			t.Errorf("Open(a's manifest, tenant b) = %v, %v; want ErrWrongKey", m != nil, err)
		}
		// A keyring with its own key for a tenant named "a" (another
		// installation, or a guessed key) cannot open it either.
		other, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "k.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := other.AddTenant("a"); err != nil {
			t.Fatal(err)
		}
		if m, err := manifest.Open(ctx, sealed, "a", other); m != nil || !errors.Is(err, manifest.ErrWrongKey) {
			t.Errorf("Open(a's manifest, another keyring's key for a) = %v, %v; want ErrWrongKey", m != nil, err)
		}
		// b's name space does not hold a's images.
		if _, _, err := catalog.Resolve(ctx, w.St, w.Kr, "b", "app"); !errors.Is(err, catalog.ErrNoImage) && !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Resolve(b/app) = %v, want ErrNoImage or ErrNotFound", err)
		}
	})

	t.Run("no chunk key in any stored object", func(t *testing.T) {
		keys := map[chunk.Key]int{}
		for i, k := range a.M.Keys {
			if k != (chunk.Key{}) {
				keys[k] = i
			}
		}
		if len(keys) == 0 {
			t.Fatal("image a has no chunk keys")
		}
		objects, windows := 0, 0
		err := w.St.List(ctx, "", func(key string, _ int64) error {
			b, err := w.St.Get(ctx, key, nil)
			if err != nil {
				return err
			}
			objects++
			for off := 0; off+32 <= len(b); off++ {
				windows++
				if i, ok := keys[chunk.Key(b[off:off+32])]; ok {
					t.Errorf("object %s holds the key of chunk %d at offset %d", key, i, off)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if objects < 3 {
			t.Fatalf("scanned %d objects; the store should hold chunks, manifests and pointers", objects)
		}
		t.Logf("scanned %d objects, %d 32-byte windows, for %d chunk keys: none found", objects, windows, len(keys))
	})

	t.Run("public part alone reads nothing", func(t *testing.T) {
		pub, err := manifest.ReadPublic(sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !cmpNames(pub.Names, a.M.Names) {
			t.Fatal("ReadPublic: chunk names differ from the opened manifest's")
		}
		// What the public part gives: names, holes and size, no keys.
		pub.Keys = make([]chunk.Key, len(pub.Names))
		im, err := agent.NewImage("b/stolen", pub, agent.Config{Tiers: []agent.Tier{agent.NewOrigin(w.St, a.Ptr.Root)}})
		if err != nil {
			t.Fatalf("NewImage(public part) = %v", err)
		}
		defer im.Close()
		i := indexOf(a, firstNonHole(a))
		off, size := a.ChunkRange(i)
		p := make([]byte, size)
		if n, err := im.ReadAt(ctx, p, off); n != 0 || !errors.Is(err, chunk.ErrCorrupt) {
			t.Errorf("ReadAt with zero keys = %d, %v; want 0 and ErrCorrupt", n, err)
		}
	})

	t.Run("store secret hides a known plaintext", func(t *testing.T) {
		// The attacker knows the plaintext of one of a's chunks (say, a
		// public base-image file) and the salt (derived from the root id,
		// which is public).
		i := indexOf(a, firstNonHole(a))
		off, size := a.ChunkRange(i)
		known := a.Plain[off : off+size]
		salt := build.Salt(a.Ptr.Root, "")
		real, err := chunk.NewSealer(w.Kr.StoreSecret())
		if err != nil {
			t.Fatal(err)
		}
		ref, _, err := real.Seal(known, salt, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ref.Name != a.M.Names[i] {
			t.Fatalf("sealing with the store's own secret gave %s, the manifest names %s: salt policy changed?", ref.Name, a.M.Names[i])
		}
		guesses := [][]byte{make([]byte, chunk.SecretSize), bytes.Repeat([]byte{0xff}, chunk.SecretSize)}
		for range 8 {
			g := make([]byte, chunk.SecretSize)
			rand.Read(g)
			guesses = append(guesses, g)
		}
		for _, g := range guesses {
			s, err := chunk.NewSealer(g)
			if err != nil {
				t.Fatal(err)
			}
			gref, _, err := s.Seal(known, salt, nil)
			if err != nil {
				t.Fatal(err)
			}
			if gref.Name == ref.Name || gref.Key == ref.Key {
				t.Errorf("a guessed secret gives the stored chunk's name or key")
			}
			if _, err := w.St.Stat(ctx, store.ChunkKey(a.Ptr.Root, gref.Name)); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Stat(name under a guessed secret) = %v, want ErrNotFound", err)
			}
		}
		// Two stores with different secrets name the same plaintext
		// differently; the same secret is convergent.
		again, _, err := real.Seal(known, salt, nil)
		if err != nil || again != ref {
			t.Errorf("Seal twice under one secret = %v, %v; want the same ref", again.Name, err)
		}
	})
}

func cmpNames(x, y []chunk.Name) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

func firstNonHole(im *imagetest.Image) chunk.Name {
	for _, n := range im.M.Names {
		if !n.IsZero() {
			return n
		}
	}
	return chunk.Name{}
}
