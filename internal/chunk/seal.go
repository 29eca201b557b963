package chunk

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Convergent encryption (DESIGN.md, "Formats"):
//
//	h    = SHA-256(P)
//	key  = HMAC-SHA256(storeSecret ‖ salt, h)
//	C    = AES-256-GCM(key, fixed nonce, P)   (no additional data)
//	name = SHA-256(C)
//
// A key encrypts exactly one plaintext, so the fixed nonce never repeats
// under one key.

// fixedNonce is the GCM nonce of every chunk. It is all zero; see above.
var fixedNonce = make([]byte, 12)

// Overhead is the number of bytes Seal adds to a plaintext (the GCM tag).
const Overhead = 16

// SecretSize is the length of a store secret.
const SecretSize = 32

// Sealer encrypts chunks convergently under one store secret. It is safe for
// concurrent use.
type Sealer struct {
	secret []byte
}

// NewSealer returns a Sealer for storeSecret, which must be SecretSize bytes.
func NewSealer(storeSecret []byte) (*Sealer, error) {
	if len(storeSecret) != SecretSize {
		return nil, fmt.Errorf("store secret: want %d bytes, got %d", SecretSize, len(storeSecret))
	}
	return &Sealer{secret: append([]byte(nil), storeSecret...)}, nil
}

// DeriveKey returns the convergent key of plaintext under salt.
func (s *Sealer) DeriveKey(plain, salt []byte) Key {
	h := sha256.Sum256(plain)
	mk := make([]byte, 0, len(s.secret)+len(salt))
	mk = append(mk, s.secret...)
	mk = append(mk, salt...)
	m := hmac.New(sha256.New, mk)
	m.Write(h[:])
	var k Key
	m.Sum(k[:0])
	return k
}

// Seal encrypts plain under salt and appends the ciphertext to dst[:0],
// returning its Ref and the ciphertext. dst may be nil; plain and dst must not
// overlap.
func (s *Sealer) Seal(plain, salt, dst []byte) (Ref, []byte, error) {
	key := s.DeriveKey(plain, salt)
	aead, err := newAEAD(key)
	if err != nil {
		return Ref{}, nil, err
	}
	c := aead.Seal(dst[:0], fixedNonce, plain, nil)
	return Ref{Name: NameOf(c), Key: key}, c, nil
}

// Open verifies ciphertext against ref.Name, decrypts it with ref.Key and
// appends the plaintext to dst[:0]. Any mismatch returns a *CorruptError; no
// plaintext is returned unless both the name and the GCM tag check out.
func Open(ref Ref, ciphertext, dst []byte) ([]byte, error) {
	if ref.IsHole() {
		return nil, errors.New("opening a hole: holes have no ciphertext")
	}
	if err := Verify(ref.Name, ciphertext); err != nil {
		return nil, err
	}
	return OpenVerified(ref, ciphertext, dst)
}

// OpenVerified is Open for ciphertext the caller has already matched to
// ref.Name with Verify (the cache fleet's client must hash a rebuilt chunk
// to know its shards were good): it only decrypts and checks the GCM tag,
// saving a second SHA-256 of the chunk. Anything else must use Open: the
// name check is what stops a holder of the key (every tenant with the same
// plaintext) from passing off other bytes.
func OpenVerified(ref Ref, ciphertext, dst []byte) ([]byte, error) {
	if ref.IsHole() {
		return nil, errors.New("opening a hole: holes have no ciphertext")
	}
	aead, err := newAEAD(ref.Key)
	if err != nil {
		return nil, err
	}
	p, err := aead.Open(dst[:0], fixedNonce, ciphertext, nil)
	if err != nil {
		return nil, &CorruptError{Name: ref.Name, Reason: "authentication failed (wrong key or tampered ciphertext)"}
	}
	return p, nil
}

func newAEAD(key Key) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, fmt.Errorf("creating AES cipher: %w", err)
	}
	return cipher.NewGCM(b)
}
