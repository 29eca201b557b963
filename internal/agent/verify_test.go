package agent

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
)

// forgingTier serves, for every name, ciphertext that the chunk's key
// decrypts and authenticates but that does not hash to the name: what a
// holder of the key could pass off if nothing hashed it.
type forgingTier struct {
	ct       []byte
	verifier bool // implements NameVerifier's answer
}

func (f *forgingTier) Fetch(_ context.Context, _ chunk.Name, dst []byte) ([]byte, error) {
	return append(dst[:0], f.ct...), nil
}
func (f *forgingTier) Fill(context.Context, chunk.Name, []byte) error { return nil }
func (f *forgingTier) Name() string                                   { return "fleet" }
func (f *forgingTier) VerifiesNames() bool                            { return f.verifier }
func (f *forgingTier) IsFleet() bool                                  { return true }

// opaque decorates a tier without claiming to pass its bytes through (no
// Unwrap), so the agent must hash what it returns.
type opaque struct{ Tier }

// The agent skips its SHA-256 only for a NameVerifier, seen through
// Wrappers (Limit, RateLimit) and through nothing else; the GCM check stays
// in every case.
func TestNameVerifierSkipsOnlyTheHash(t *testing.T) {
	im := buildImage(t, 4096, 4096, nil, 21)
	ref := im.m.Ref(0)
	other := bytes.Repeat([]byte{0x5a}, 4096)
	block, err := aes.NewCipher(ref.Key[:])
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	forged := gcm.Seal(nil, make([]byte, gcm.NonceSize()), other, nil)
	if chunk.NameOf(forged) == ref.Name {
		t.Fatal("the forged ciphertext hashes to the chunk's name")
	}
	garbage := bytes.Repeat([]byte{1}, len(forged))

	tests := []struct {
		name string
		tier Tier
		want []byte // nil: the read fails with chunk.ErrCorrupt
	}{
		{"plain tier: hashed, forgery refused", &forgingTier{ct: forged}, nil},
		{"verifier saying false: hashed", &forgingTier{ct: forged, verifier: false}, nil},
		{"verifier: trusted to have hashed", &forgingTier{ct: forged, verifier: true}, other},
		{"verifier behind Limit and RateLimit", RateLimit(Limit(&forgingTier{ct: forged, verifier: true}, 2), 1000, 10), other},
		{"verifier behind a decorator that is no Wrapper: hashed", &opaque{&forgingTier{ct: forged, verifier: true}}, nil},
		{"verifier serving bytes GCM rejects", &forgingTier{ct: garbage, verifier: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(Config{Tiers: []Tier{tt.tier}})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			img, err := a.Open("img", im.m)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			buf := make([]byte, 4096)
			n, err := img.ReadAt(context.Background(), buf, 0)
			if tt.want == nil {
				if !errors.Is(err, chunk.ErrCorrupt) || !errors.Is(err, ErrIO) {
					t.Fatalf("ReadAt = %d, %v; want ErrIO wrapping chunk.ErrCorrupt", n, err)
				}
				return
			}
			if err != nil || !bytes.Equal(buf[:n], tt.want) {
				t.Fatalf("ReadAt = %d, %v; want the tier's bytes", n, err)
			}
		})
	}
}
