package profile

import (
	"testing"
	"time"
)

// FuzzOpen feeds untrusted bytes (a profile object from the store) to Open,
// with the right key so that mutations past authentication reach the body
// decoder through seeds sealed here. Open must never panic, and anything it
// accepts must be valid for the image and seal again.
func FuzzOpen(f *testing.F) {
	kr := keyring(f, "acme")
	im, _ := opened(f, kr, "acme", 40)
	key := subkey(f, im)
	t0 := time.Unix(1700000000, 0)
	for _, p := range []*Profile{
		FromStart(nil, 40, t0),
		FromStart([]uint32{1, 2, 3}, 40, t0),
		Combine([]*Profile{FromStart([]uint32{5, 6}, 40, t0), FromStart([]uint32{6, 39}, 40, t0)}),
	} {
		b, err := Seal(p, im.ID, key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("LODEPRF\x00\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Open(b, im.ID, key, 40)
		if err != nil {
			if p != nil {
				t.Fatal("Open returned a profile with an error")
			}
			return
		}
		if err := p.Validate(40); err != nil {
			t.Fatalf("Open accepted an invalid profile: %v", err)
		}
		if _, err := Seal(p, im.ID, key); err != nil {
			t.Fatalf("an opened profile does not seal: %v", err)
		}
	})
}

// FuzzDecodeBody reaches the body decoder directly (what a key holder could
// seal): it must reject without panicking.
func FuzzDecodeBody(f *testing.F) {
	f.Add(make([]byte, bodyFixed))
	f.Add([]byte{40, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeBody(b)
		if err == nil && len(p.Chunks) != len(p.Counts) {
			t.Fatal("decodeBody: chunks and counts differ in length")
		}
		if err == nil {
			_ = p.Validate(40)
		}
	})
}
