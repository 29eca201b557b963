package profile

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lode-dev/lode/internal/manifest"
)

func TestSealOpenRoundTrip(t *testing.T) {
	kr := keyring(t, "acme")
	im, _ := opened(t, kr, "acme", 100)
	key := subkey(t, im)
	t0 := time.Unix(1700000000, 123).UTC()
	for _, p := range []*Profile{
		FromStart(nil, 100, t0),
		FromStart([]uint32{5, 1, 99, 5, 200, 7}, 100, t0),
		Combine([]*Profile{FromStart([]uint32{1, 2, 3}, 100, t0), FromStart([]uint32{3, 4}, 100, t0.Add(time.Hour))}),
	} {
		b, err := Seal(p, im.ID, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Open(b, im.ID, key, 100)
		if err != nil {
			t.Fatalf("Open(Seal(%v)) = %v", p, err)
		}
		if d := cmp.Diff(p, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); d != "" {
			t.Errorf("round trip (-want +got):\n%s", d)
		}
	}
}

func TestOpenRefuses(t *testing.T) {
	kr := keyring(t, "acme", "other")
	im, _ := opened(t, kr, "acme", 50)
	same, _ := opened(t, kr, "acme", 50) // a rebuild: same content, new manifest id
	otherTenant, _ := opened(t, kr, "other", 50)
	// Another keyring that also has a tenant "acme", with its own key.
	stranger := keyring(t, "acme")
	_, sealedM := opened(t, kr, "acme", 50)
	if _, err := manifest.Open(context.Background(), sealedM, "acme", stranger); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("another keyring opened the manifest: %v", err)
	}

	key := subkey(t, im)
	p := FromStart([]uint32{3, 1, 4, 15, 9, 26}, 50, time.Unix(1700000000, 0))
	good, err := Seal(p, im.ID, key)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 1
		return b
	}
	for _, tc := range []struct {
		name   string
		sealed []byte
		id     string
		key    []byte
		chunks int
		want   error
	}{
		{"magic", flip(0), im.ID, key, 50, ErrCorrupt},
		{"version", flip(8), im.ID, key, 50, ErrVersion},
		{"id bytes", flip(12), im.ID, key, 50, ErrStale},
		{"nonce", flip(headerSize - 1), im.ID, key, 50, ErrCorrupt},
		{"ciphertext", flip(headerSize + 3), im.ID, key, 50, ErrCorrupt},
		{"tag", flip(len(good) - 1), im.ID, key, 50, ErrCorrupt},
		{"truncated", good[:len(good)-1], im.ID, key, 50, ErrCorrupt},
		{"short", good[:20], im.ID, key, 50, ErrCorrupt},
		{"rebuilt image (other manifest id)", good, same.ID, subkey(t, same), 50, ErrStale},
		{"other manifest's key", good, im.ID, subkey(t, same), 50, ErrCorrupt},
		{"other tenant's key", good, im.ID, subkey(t, otherTenant), 50, ErrCorrupt},
		{"image shrank", good, im.ID, key, 20, ErrStale},
		{"bad id", good, "xyz", key, 50, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Open(tc.sealed, tc.id, tc.key, tc.chunks)
			if !errors.Is(err, tc.want) || got != nil {
				t.Errorf("Open = %v, %v; want nil, %v", got, err, tc.want)
			}
		})
	}
	if _, err := Open(good, im.ID, key, 50); err != nil {
		t.Errorf("Open(good) = %v", err)
	}
}

func TestSubKeyNeedsOpen(t *testing.T) {
	m := &manifest.Manifest{}
	if _, ok := m.SubKey(KeyPurpose); ok {
		t.Error("a manifest that was not opened has a subkey")
	}
	kr := keyring(t, "acme")
	a, _ := opened(t, kr, "acme", 4)
	if k1, k2 := subkey(t, a), subkey(t, a); string(k1) != string(k2) || len(k1) != 32 {
		t.Errorf("SubKey is not a stable 32-byte key: %x %x", k1, k2)
	}
	if k, _ := a.M.SubKey("something else"); string(k) == string(subkey(t, a)) {
		t.Error("SubKey ignores its purpose")
	}
	c := *a.M
	if _, ok := c.SubKey(KeyPurpose); ok {
		t.Error("a copy of an opened manifest has its subkey")
	}
}
