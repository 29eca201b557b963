package chunk_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"math/rand"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/chunk"
)

func secret() []byte { return bytes.Repeat([]byte{0x42}, chunk.SecretSize) }

// TestSealKnownAnswer pins the convergent-encryption construction forever:
// a change here changes every stored chunk's name. The values were checked
// against an independent implementation (Python hashlib/hmac + cryptography AESGCM).
func TestSealKnownAnswer(t *testing.T) {
	s, err := chunk.NewSealer(secret())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, plain, salt, wantName, wantKey string
	}{
		{"hello", "hello, lode", "salt-1",
			"c04b5bb8a587dee839d462233b673bac6db44f9086d8b6e963a21a26d4589ea3",
			"eb5c76e4731488d88bc6060c88671148af2d018708e616521f94756b81ad93aa"},
	}
	for _, tc := range tests {
		ref, ct, err := s.Seal([]byte(tc.plain), []byte(tc.salt), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != len(tc.plain)+chunk.Overhead {
			t.Errorf("%s: ciphertext is %d bytes, want %d", tc.name, len(ct), len(tc.plain)+chunk.Overhead)
		}
		if got := ref.Name.String(); got != tc.wantName {
			t.Errorf("%s: name = %s, want %s", tc.name, got, tc.wantName)
		}
		if got := hex.EncodeToString(ref.Key[:]); got != tc.wantKey {
			t.Errorf("%s: key = %s, want %s", tc.name, got, tc.wantKey)
		}
	}
}

func TestSealIsConvergent(t *testing.T) {
	s1, _ := chunk.NewSealer(secret())
	s2, _ := chunk.NewSealer(bytes.Repeat([]byte{7}, chunk.SecretSize))
	p := bytes.Repeat([]byte("chunk"), 1000)
	a, _, _ := s1.Seal(p, []byte("root-a"), nil)
	b, _, _ := s1.Seal(p, []byte("root-a"), nil)
	c, _, _ := s1.Seal(p, []byte("root-b"), nil)
	d, _, _ := s2.Seal(p, []byte("root-a"), nil)
	if a != b {
		t.Error("same plaintext, salt and secret gave different refs")
	}
	if a.Name == c.Name {
		t.Error("a different salt gave the same name")
	}
	if a.Name == d.Name {
		t.Error("a different store secret gave the same name: presence of a known chunk could be confirmed")
	}
}

func TestOpen(t *testing.T) {
	s, _ := chunk.NewSealer(secret())
	plain := make([]byte, 4096)
	rand.New(rand.NewSource(1)).Read(plain)
	ref, ct, err := s.Seal(plain, []byte("salt"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := chunk.Open(ref, ct, nil)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %d bytes, %v; want the plaintext", len(got), err)
	}
	other, otherCT, _ := s.Seal([]byte("another valid chunk"), []byte("salt"), nil)
	tests := []struct {
		name string
		ref  chunk.Ref
		ct   []byte
	}{
		{"flipped bit", ref, flip(ct, 100)},
		{"flipped tag", ref, flip(ct, len(ct)-1)},
		{"truncated", ref, ct[:len(ct)-1]},
		{"empty", ref, nil},
		{"swapped for another valid chunk", ref, otherCT},
		{"wrong key, right name", chunk.Ref{Name: ref.Name, Key: other.Key}, ct},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chunk.Open(tc.ref, tc.ct, nil)
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			var ce *chunk.CorruptError
			if !errors.As(err, &ce) || ce.Name != tc.ref.Name {
				t.Errorf("error %v does not name chunk %s", err, tc.ref.Name)
			}
			if got != nil {
				t.Errorf("Open returned %d bytes with an error", len(got))
			}
			// Without the name check, the GCM tag still refuses each of them.
			if got, err := chunk.OpenVerified(tc.ref, tc.ct, nil); !errors.Is(err, chunk.ErrCorrupt) || got != nil {
				t.Errorf("OpenVerified = %d bytes, %v; want ErrCorrupt", len(got), err)
			}
		})
	}
	if got, err := chunk.OpenVerified(ref, ct, nil); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("OpenVerified = %d bytes, %v; want the plaintext", len(got), err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 1
	return c
}

func TestCut(t *testing.T) {
	const cs = 8192
	img := make([]byte, 5*cs+100)
	rand.New(rand.NewSource(2)).Read(img[:cs])
	// chunk 1 and 2 stay zero (holes); chunk 3 has one byte set; 4 random; 5 short.
	img[3*cs+cs/2] = 1
	rand.New(rand.NewSource(3)).Read(img[4*cs:])
	type piece struct {
		I    int
		Len  int
		Hole bool
	}
	var got []piece
	var back []byte
	err := chunk.Cut(context.Background(), bytes.NewReader(img), int64(len(img)), cs, func(i int, p []byte, hole bool) error {
		got = append(got, piece{i, len(p), hole})
		back = append(back, p...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []piece{{0, cs, false}, {1, cs, true}, {2, cs, true}, {3, cs, false}, {4, cs, false}, {5, 100, false}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Cut pieces (-want +got):\n%s", diff)
	}
	if !bytes.Equal(back, img) {
		t.Error("pieces do not reassemble the image")
	}
	if err := chunk.Cut(context.Background(), bytes.NewReader(img), int64(len(img)), 1000, nil); err == nil {
		t.Error("Cut accepted a chunk size that is not a multiple of 4096")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := chunk.Cut(ctx, bytes.NewReader(img), int64(len(img)), cs, func(int, []byte, bool) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Cut with a cancelled context = %v", err)
	}
}

func TestIsZero(t *testing.T) {
	for n := 0; n < 40; n++ {
		b := make([]byte, n)
		if !chunk.IsZero(b) {
			t.Fatalf("IsZero(%d zero bytes) = false", n)
		}
		for i := 0; i < n; i++ {
			b[i] = 1
			if chunk.IsZero(b) {
				t.Fatalf("IsZero with byte %d of %d set = true", i, n)
			}
			b[i] = 0
		}
	}
}

func TestParseName(t *testing.T) {
	n := chunk.NameOf([]byte("x"))
	got, err := chunk.ParseName(n.String())
	if err != nil || got != n {
		t.Fatalf("ParseName(String()) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "zz", n.String()[:63], n.String() + "0", "g" + n.String()[1:]} {
		if _, err := chunk.ParseName(bad); !errors.Is(err, chunk.ErrBadName) {
			t.Errorf("ParseName(%q) = %v, want ErrBadName", bad, err)
		}
	}
}

func BenchmarkSeal_512K(b *testing.B) {
	s, _ := chunk.NewSealer(secret())
	p := make([]byte, chunk.DefaultSize)
	rand.New(rand.NewSource(1)).Read(p)
	dst := make([]byte, 0, len(p)+chunk.Overhead)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := s.Seal(p, []byte("salt"), dst); err != nil {
			b.Fatal(err)
		}
	}
}

// benchOpen measures open on one sealed 512 KiB chunk.
func benchOpen(b *testing.B, open func(chunk.Ref, []byte, []byte) ([]byte, error)) {
	s, _ := chunk.NewSealer(secret())
	p := make([]byte, chunk.DefaultSize)
	rand.New(rand.NewSource(1)).Read(p)
	ref, ct, _ := s.Seal(p, []byte("salt"), nil)
	dst := make([]byte, 0, len(p))
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := open(ref, ct, dst); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen_512K(b *testing.B) { benchOpen(b, chunk.Open) }

// OpenVerified is Open without the SHA-256 of the name check: the cost the
// agent saves on a chunk the fleet client already hashed.
func BenchmarkOpenVerified_512K(b *testing.B) { benchOpen(b, chunk.OpenVerified) }
