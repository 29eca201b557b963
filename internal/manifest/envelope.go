package manifest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Seal validates m, encrypts its secret part under a fresh random data key,
// wraps that key with tenant's key from kr, and returns the sealed bytes.
// Sealing the same manifest twice gives different bytes (and IDs).
func Seal(ctx context.Context, m *Manifest, tenant string, kr Keyring) ([]byte, error) {
	return seal(ctx, m, tenant, "", kr, rand.Reader)
}

// SealImage is Seal for tenant's image named image. When kr is an
// ImageKeyring that binds tenant's keys to images (a KMS key), the data key
// comes from kr.GenerateDataKey, bound to tenant and image; OpenImage must
// then be given the same image name.
func SealImage(ctx context.Context, m *Manifest, tenant, image string, kr Keyring) ([]byte, error) {
	return seal(ctx, m, tenant, image, kr, rand.Reader)
}

// seal is SealImage with its randomness (data key, then nonce) read from
// rnd, so that known-answer tests can pin the bytes.
func seal(ctx context.Context, m *Manifest, tenant, image string, kr Keyring, rnd io.Reader) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("sealing manifest: %w", err)
	}
	if err := validName("tenant", tenant); err != nil {
		return nil, fmt.Errorf("sealing manifest: %w", err)
	}
	var random [keySize + nonceSize]byte
	var dataKey, nonce, wrapped []byte
	if ik, ok := kr.(ImageKeyring); ok && ik.BindsImages(tenant) {
		dk, w, err := ik.GenerateDataKey(ctx, tenant, image)
		if err != nil {
			return nil, fmt.Errorf("sealing manifest: %w", err)
		}
		defer clear(dk)
		if _, err := io.ReadFull(rnd, random[keySize:]); err != nil {
			return nil, fmt.Errorf("sealing manifest: reading random nonce: %w", err)
		}
		dataKey, nonce, wrapped = dk, random[keySize:], w
	} else {
		if _, err := io.ReadFull(rnd, random[:]); err != nil {
			return nil, fmt.Errorf("sealing manifest: reading random data key: %w", err)
		}
		dataKey, nonce = random[:keySize], random[keySize:]
		w, err := kr.Wrap(ctx, tenant, dataKey)
		if err != nil {
			return nil, fmt.Errorf("sealing manifest: wrapping data key for tenant %q: %w", tenant, err)
		}
		wrapped = w
	}
	defer clear(random[:])
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedKey {
		return nil, fmt.Errorf("sealing manifest: wrapped data key for tenant %q is %d bytes, want 1 to %d", tenant, len(wrapped), MaxWrappedKey)
	}
	aead, err := newAEAD(dataKey)
	if err != nil {
		return nil, err
	}

	secret := appendSecret(make([]byte, 0, secretSize(m)), m)
	defer clear(secret)
	pub := publicSize(m)
	aadSize := headerSize + 4 + pub + 1 + len(tenant) + 2 + len(wrapped) + nonceSize + 4
	b := make([]byte, 0, aadSize+len(secret)+tagSize)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint32(b, uint32(pub))
	b = appendPublic(b, m, Version)
	b = appendStr8(b, tenant)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(wrapped)))
	b = append(b, wrapped...)
	b = append(b, nonce...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(secret)+tagSize))
	if len(b) != aadSize {
		panic(fmt.Sprintf("manifest: encoded %d bytes before the ciphertext, computed %d", len(b), aadSize))
	}
	// The ciphertext goes into b's spare capacity, which does not overlap
	// the additional data b[:aadSize].
	ct := aead.Seal(b[aadSize:aadSize], nonce, secret, b)
	return b[:aadSize+len(ct)], nil
}

// envelope is a parsed sealed manifest; its slices alias the input.
type envelope struct {
	version    uint16
	public     []byte
	tenant     string
	wrapped    []byte
	nonce      []byte
	aad        []byte
	ciphertext []byte
}

// parseEnvelope splits sealed into its sections, checking the magic, the
// version and every length, but nothing inside the public part.
func parseEnvelope(sealed []byte) (*envelope, error) {
	if len(sealed) < len(magic) || string(sealed[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a lode manifest (bad magic)", ErrCorrupt)
	}
	if len(sealed) < headerSize {
		return nil, fmt.Errorf("%w: truncated header (%d bytes)", ErrCorrupt, len(sealed))
	}
	v := binary.LittleEndian.Uint16(sealed[len(magic):])
	if v < minVersion || v > Version {
		return nil, fmt.Errorf("%w: version %d (this lode reads versions %d to %d)", ErrVersion, v, minVersion, Version)
	}
	d := &decoder{what: "manifest", b: sealed, off: headerSize}
	e := &envelope{version: v}
	e.public = d.take("public part", int(d.u32("public part length")))
	e.tenant = d.str8("tenant")
	e.wrapped = d.take("wrapped key", int(d.u16("wrapped key length")))
	e.nonce = d.take("nonce", nonceSize)
	n := int(d.u32("ciphertext length"))
	aadEnd := d.off
	if d.err == nil && n < tagSize {
		d.fail("ciphertext length", "%d bytes, shorter than the %d-byte tag", n, tagSize)
	}
	e.ciphertext = d.take("ciphertext", n)
	d.end()
	if d.err != nil {
		return nil, d.err
	}
	if len(e.wrapped) == 0 {
		return nil, fmt.Errorf("%w: empty wrapped key", ErrCorrupt)
	}
	if err := validName("tenant", e.tenant); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	e.aad = sealed[:aadEnd]
	return e, nil
}

// Open checks, decrypts and decodes a sealed manifest for tenant, returning
// the full manifest. Errors: ErrWrongKey when the manifest belongs to another
// tenant or kr's key cannot unwrap its data key; ErrNoKey when kr has no key
// for tenant; ErrCorrupt for any malformed or tampered byte; ErrVersion for
// a format version this code does not read. When the manifest names the
// tenant but the tenant's key does not unwrap the data key, the two causes
// (a different keyring, or a damaged wrapped key) cannot be told apart and
// the error wraps both ErrWrongKey and ErrCorrupt. No manifest is returned
// with an error.
func Open(ctx context.Context, sealed []byte, tenant string, kr Keyring) (*Manifest, error) {
	return OpenImage(ctx, sealed, tenant, "", kr)
}

// OpenImage is Open for tenant's image named image: a manifest sealed by
// SealImage under a key that binds images (KMS) opens only under the image
// name it was sealed for (else ErrWrongKey). ErrKMSUnavailable when that KMS
// cannot be reached.
func OpenImage(ctx context.Context, sealed []byte, tenant, image string, kr Keyring) (*Manifest, error) {
	e, err := parseEnvelope(sealed)
	if err != nil {
		return nil, fmt.Errorf("opening manifest: %w", err)
	}
	m, err := decodePublic(e.public, e.version)
	if err != nil {
		return nil, fmt.Errorf("opening manifest: %w", err)
	}
	if e.tenant != tenant {
		return nil, fmt.Errorf("opening manifest as tenant %q: it is sealed for tenant %q: %w", tenant, e.tenant, ErrWrongKey)
	}
	var dataKey []byte
	if ik, ok := kr.(ImageKeyring); ok && ik.BindsImages(tenant) {
		dataKey, err = ik.UnwrapImage(ctx, tenant, image, e.wrapped)
	} else {
		dataKey, err = kr.Unwrap(ctx, tenant, e.wrapped)
	}
	switch {
	case errors.Is(err, ErrWrongKey):
		return nil, fmt.Errorf("opening manifest of tenant %q: unwrapping its data key (the keyring is not the one it was sealed with, or the wrapped key is damaged): %w; %w", tenant, err, ErrCorrupt)
	case err != nil:
		return nil, fmt.Errorf("opening manifest of tenant %q: unwrapping its data key: %w", tenant, err)
	case len(dataKey) != keySize:
		return nil, fmt.Errorf("opening manifest of tenant %q: unwrapped data key is %d bytes, want %d: %w", tenant, len(dataKey), keySize, ErrCorrupt)
	}
	defer clear(dataKey)
	aead, err := newAEAD(dataKey)
	if err != nil {
		return nil, err
	}
	secret, err := aead.Open(nil, e.nonce, e.ciphertext, e.aad)
	if err != nil {
		return nil, fmt.Errorf("opening manifest of tenant %q: authentication failed (tampered or damaged): %w", tenant, ErrCorrupt)
	}
	defer clear(secret)
	if err := decodeSecret(secret, m); err != nil {
		return nil, fmt.Errorf("opening manifest of tenant %q: %w", tenant, err)
	}
	if err := m.deriveSubkeys(dataKey); err != nil {
		return nil, err
	}
	return m, nil
}

// ReadPublic parses a sealed manifest's structure and returns its public
// fields only (Keys nil, Config and Hints zero). It needs no key and
// therefore CANNOT authenticate anything: a forger can change the public part
// (names, sizes, root) without ReadPublic noticing; only Open detects that.
// Callers that fetched the bytes by ID should check ID(sealed) against it,
// which pins every byte. The garbage collector uses ReadPublic to list and
// copy an image's chunks. Errors: ErrCorrupt (malformed), ErrVersion.
func ReadPublic(sealed []byte) (*Manifest, error) {
	e, err := parseEnvelope(sealed)
	if err != nil {
		return nil, fmt.Errorf("reading public manifest: %w", err)
	}
	m, err := decodePublic(e.public, e.version)
	if err != nil {
		return nil, fmt.Errorf("reading public manifest: %w", err)
	}
	return m, nil
}

// ID returns the manifest's object name: the lower-case hex SHA-256 of the
// sealed bytes.
func ID(sealed []byte) string {
	sum := sha256.Sum256(sealed)
	return hex.EncodeToString(sum[:])
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("creating AES cipher: %w", err)
	}
	return cipher.NewGCM(b)
}
