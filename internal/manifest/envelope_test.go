package manifest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lode-dev/lode/internal/chunk"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	kr := testKeyring(t, "roundtrip", "acme")
	tests := []struct {
		name string
		m    *Manifest
	}{
		{"one chunk, empty config", makeManifest(spec{chunks: 1})},
		{"holes everywhere", makeManifest(spec{chunks: 17, hole: func(int) bool { return true }})},
		{"no holes", makeManifest(spec{chunks: 17})},
		{"some holes", makeManifest(spec{chunks: 17, hole: func(i int) bool { return i%3 == 0 }})},
		{"last chunk short", makeManifest(spec{chunks: 5, short: 512<<10 - 4096})},
		{"last chunk one byte", makeManifest(spec{chunks: 5, short: 512<<10 - 1})},
		{"smallest chunk size", makeManifest(spec{chunks: 9, chunkSize: chunk.MinSize})},
		{"largest chunk size", makeManifest(spec{chunks: 2, chunkSize: chunk.MaxSize})},
		{"hints", makeManifest(spec{chunks: 8, hints: []uint32{7, 0, 3, 1}})},
		{"hints on every chunk", makeManifest(spec{chunks: 4, hints: []uint32{3, 2, 1, 0}})},
		{"zstd with hints", func() *Manifest {
			m := makeManifest(spec{chunks: 6, hole: func(i int) bool { return i == 2 }, hints: []uint32{5, 0, 1}})
			m.Compression = CompressionZstd
			return m
		}()},
		{"full config", makeManifest(spec{chunks: 2, config: Config{
			Entrypoint: []string{"/docker-entrypoint.sh"},
			Cmd:        []string{"nginx", "-g", "daemon off;", ""},
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.27.0", "EMPTY="},
			WorkingDir: "/usr/share/nginx/html",
			User:       "nginx:nginx",
		}})},
		{"config at limits", makeManifest(spec{chunks: 1, config: Config{
			Env:  make([]string, MaxList),
			User: strings.Repeat("u", MaxString),
			Cmd:  []string{strings.Repeat("c", MaxString)},
		}})},
		{"large: 20480 chunks (10 GiB)", makeManifest(spec{chunks: 20480, short: 1000, hole: func(i int) bool { return i%7 == 0 },
			hints: []uint32{5, 20479, 1, 100}})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sealed, err := Seal(ctx, tc.m, "acme", kr)
			if err != nil {
				t.Fatalf("Seal() = %v", err)
			}
			got, err := Open(ctx, sealed, "acme", kr)
			if err != nil {
				t.Fatalf("Open() = %v", err)
			}
			if d := diffManifest(got, tc.m); d != "" {
				t.Errorf("Open(Seal(m)) mismatch (-want +got):\n%s", d)
			}
			pub, err := ReadPublic(sealed)
			if err != nil {
				t.Fatalf("ReadPublic() = %v", err)
			}
			if d := diffManifest(pub, publicOnly(tc.m)); d != "" {
				t.Errorf("ReadPublic(Seal(m)) mismatch (-want +got):\n%s", d)
			}
			if pub.Keys != nil || pub.Hints != nil || !cmp.Equal(pub.Config, Config{}) {
				t.Errorf("ReadPublic() exposed secret fields: keys %d, hints %v, config %+v", len(pub.Keys), pub.Hints, pub.Config)
			}
			again, err := Seal(ctx, tc.m, "acme", kr)
			if err != nil {
				t.Fatalf("Seal() again = %v", err)
			}
			if bytes.Equal(again, sealed) || ID(again) == ID(sealed) {
				t.Errorf("two Seals of one manifest gave the same bytes; the data key and nonce must be fresh")
			}
		})
	}
}

func TestSealRejectsInvalid(t *testing.T) {
	ctx := context.Background()
	kr := testKeyring(t, "invalid", "acme")
	m := makeManifest(spec{chunks: 2})
	m.FSType = "xfs"
	if b, err := Seal(ctx, m, "acme", kr); !errors.Is(err, ErrInvalid) || b != nil {
		t.Errorf("Seal(fstype xfs) = %d bytes, %v; want ErrInvalid", len(b), err)
	}
	for _, tenant := range []string{"", "a/b", ".hidden", strings.Repeat("t", 129)} {
		if b, err := Seal(ctx, makeManifest(spec{chunks: 2}), tenant, kr); !errors.Is(err, ErrInvalid) || b != nil {
			t.Errorf("Seal(tenant %q) = %d bytes, %v; want ErrInvalid", tenant, len(b), err)
		}
	}
	if b, err := Seal(ctx, makeManifest(spec{chunks: 2}), "globex", kr); !errors.Is(err, ErrNoKey) || b != nil {
		t.Errorf("Seal(tenant without key) = %d bytes, %v; want ErrNoKey", len(b), err)
	}
}

// katKeyring is the keyring of the known-answer test: tenant "acme" with
// KEK 00 01 … 1f, store secret 20 21 … 3f, nonces from a fixed stream.
func katKeyring() *FileKeyring {
	kek, secret := make([]byte, 32), make([]byte, 32)
	for i := range kek {
		kek[i], secret[i] = byte(i), byte(32+i)
	}
	return &FileKeyring{path: "(kat)", rand: newDetReader("lode manifest KAT keyring"), secret: secret, tenants: map[string][]byte{"acme": kek}}
}

// katID pins the known-answer manifest forever: if it changes, the format
// changed, which needs a version bump (DESIGN.md, "Formats").
const katID = "8246c06da2cc47ea559adb0434bd57a88b68b868daf3f8064ad2412ad3f58906"

// katIDv1 pins the version 1 golden file, sealed before the source fields.
const katIDv1 = "5283b4e833e4b449720d4b9ffb12a45439cf1e38d729a0be52bf9825a315723d"

// katSourceManifest is smallManifest with the version 2 source fields set.
func katSourceManifest() *Manifest {
	m := smallManifest()
	m.SourceRef = "docker://127.0.0.1:5000/kat/app:1"
	m.SourceIndexDigest = "sha256:" + strings.Repeat("ab", 32)
	m.DiffIDs = []string{"sha256:" + strings.Repeat("01", 32), "sha256:" + strings.Repeat("02", 32)}
	return m
}

func TestKnownAnswer(t *testing.T) {
	ctx := context.Background()
	golden := filepath.Join("testdata", "sealed-v2.bin")
	m := katSourceManifest()
	sealed, err := seal(ctx, m, "acme", "", katKeyring(), newDetReader("lode manifest KAT seal"))
	if err != nil {
		t.Fatalf("seal() = %v", err)
	}
	if *update {
		if err := os.WriteFile(golden, sealed, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s: %d bytes, ID %s", golden, len(sealed), ID(sealed))
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(sealed, want) {
		t.Errorf("seal(KAT manifest) differs from %s (%d vs %d bytes); a format change needs a version bump", golden, len(sealed), len(want))
	}
	if got := ID(want); got != katID {
		t.Errorf("ID(%s) = %s, want %s", golden, got, katID)
	}
	got, err := Open(ctx, want, "acme", katKeyring())
	if err != nil {
		t.Fatalf("Open(%s) = %v", golden, err)
	}
	if d := diffManifest(got, m); d != "" {
		t.Errorf("Open(%s) mismatch (-want +got):\n%s", golden, d)
	}
}

// TestMigrationV1 is the migration test of the version 2 bump: manifests
// sealed in format version 1 (before the source fields) keep opening, with
// and without a key, and read as having no source reference or diff IDs.
func TestMigrationV1(t *testing.T) {
	ctx := context.Background()
	golden := filepath.Join("testdata", "sealed-v1.bin")
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got := ID(want); got != katIDv1 {
		t.Fatalf("ID(%s) = %s, want %s (the v1 golden file must never change)", golden, got, katIDv1)
	}
	if v := binary.LittleEndian.Uint16(want[8:]); v != 1 {
		t.Fatalf("%s has version %d, want 1", golden, v)
	}
	got, err := Open(ctx, want, "acme", katKeyring())
	if err != nil {
		t.Fatalf("Open(%s) = %v", golden, err)
	}
	if d := diffManifest(got, smallManifest()); d != "" {
		t.Errorf("Open(%s) mismatch (-want +got):\n%s", golden, d)
	}
	pub, err := ReadPublic(want)
	if err != nil {
		t.Fatalf("ReadPublic(%s) = %v", golden, err)
	}
	if pub.SourceRef != "" || pub.SourceIndexDigest != "" || pub.DiffIDs != nil || pub.SourceDigest != smallManifest().SourceDigest {
		t.Errorf("ReadPublic(%s) source = %q %q %q %v, want only the v1 source digest", golden, pub.SourceDigest, pub.SourceRef, pub.SourceIndexDigest, pub.DiffIDs)
	}
	// Sealing what a v1 manifest opened to writes the current version.
	resealed, err := Seal(ctx, got, "acme", katKeyring())
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint16(resealed[8:]); v != Version {
		t.Errorf("resealed version = %d, want %d", v, Version)
	}
}

func TestChainIDs(t *testing.T) {
	// Values from the OCI image spec's worked example shape: chain(0) is the
	// diff ID, chain(n) = sha256(chain(n-1) + " " + diff(n)).
	a, b := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	got := ChainIDs([]string{a, b})
	sum := sha256.Sum256([]byte(a + " " + b))
	want := []string{a, "sha256:" + hex.EncodeToString(sum[:])}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ChainIDs() mismatch (-want +got):\n%s", d)
	}
	if ChainIDs(nil) != nil {
		t.Errorf("ChainIDs(nil) != nil")
	}
}

// region is a byte range of a sealed manifest and the errors Open may
// return when one of its bytes changes.
type region struct {
	name       string
	start, end int
	want       []error // Open's error must wrap one of these
}

// regions splits a sealed manifest by the format's layout.
func regions(t *testing.T, sealed []byte) []region {
	t.Helper()
	pub := int(binary.LittleEndian.Uint32(sealed[10:]))
	tenant := 14 + pub
	tlen := int(sealed[tenant])
	wrapped := tenant + 1 + tlen
	wlen := int(binary.LittleEndian.Uint16(sealed[wrapped:]))
	nonce := wrapped + 2 + wlen
	ctlen := nonce + nonceSize
	ct := ctlen + 4
	tag := len(sealed) - tagSize
	corrupt := []error{ErrCorrupt}
	rs := []region{
		{"magic", 0, 8, corrupt},
		// Version 1 is still read: the bytes then parse as the older layout
		// (or fail authentication).
		{"version", 8, 10, []error{ErrVersion, ErrCorrupt}},
		{"public length", 10, 14, corrupt},
		{"public part", 14, tenant, corrupt},
		{"tenant length", tenant, tenant + 1, corrupt},
		// Another valid tenant name makes it someone else's manifest.
		{"tenant name", tenant + 1, wrapped, []error{ErrCorrupt, ErrWrongKey}},
		{"wrapped key length", wrapped, wrapped + 2, corrupt},
		{"wrapped key", wrapped + 2, nonce, corrupt},
		{"nonce", nonce, ctlen, corrupt},
		{"ciphertext length", ctlen, ct, corrupt},
		{"ciphertext", ct, tag, corrupt},
		{"tag", tag, len(sealed), corrupt},
	}
	if rs[len(rs)-1].end != len(sealed) || ct >= tag {
		t.Fatalf("layout arithmetic is wrong: %+v for %d bytes", rs, len(sealed))
	}
	return rs
}

func TestTamper(t *testing.T) {
	ctx := context.Background()
	kr := testKeyring(t, "tamper", "acme")
	sealed, err := Seal(ctx, smallManifest(), "acme", kr)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regions(t, sealed) {
		t.Run(r.name, func(t *testing.T) {
			for i := r.start; i < r.end; i++ {
				for _, mask := range []byte{0x01, 0x80, 0xff} {
					b := bytes.Clone(sealed)
					b[i] ^= mask
					m, err := Open(ctx, b, "acme", kr)
					if m != nil || !wrapsAny(err, r.want) {
						t.Fatalf("Open(byte %d ^ %#x) = %v, %v; want nil and one of %v", i, mask, m, err, r.want)
					}
				}
			}
		})
	}
	t.Run("appended byte", func(t *testing.T) {
		b := append(bytes.Clone(sealed), 0)
		if m, err := Open(ctx, b, "acme", kr); m != nil || !errors.Is(err, ErrCorrupt) {
			t.Errorf("Open(sealed+1) = %v, %v; want ErrCorrupt", m, err)
		}
		if m, err := ReadPublic(b); m != nil || !errors.Is(err, ErrCorrupt) {
			t.Errorf("ReadPublic(sealed+1) = %v, %v; want ErrCorrupt", m, err)
		}
	})
}

func wrapsAny(err error, targets []error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

func TestTruncate(t *testing.T) {
	ctx := context.Background()
	kr := testKeyring(t, "truncate", "acme")
	sealed, err := Seal(ctx, smallManifest(), "acme", kr)
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(sealed); n++ {
		if m, err := Open(ctx, sealed[:n], "acme", kr); m != nil || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open(first %d of %d bytes) = %v, %v; want ErrCorrupt", n, len(sealed), m, err)
		}
		if m, err := ReadPublic(sealed[:n]); m != nil || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ReadPublic(first %d of %d bytes) = %v, %v; want ErrCorrupt", n, len(sealed), m, err)
		}
	}
}

func TestVersion(t *testing.T) {
	kr := testKeyring(t, "version", "acme")
	sealed, err := Seal(context.Background(), smallManifest(), "acme", kr)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint16{0, Version + 1, 0xffff} {
		b := bytes.Clone(sealed)
		binary.LittleEndian.PutUint16(b[8:], v)
		if m, err := ReadPublic(b); m != nil || !errors.Is(err, ErrVersion) {
			t.Errorf("ReadPublic(version %d) = %v, %v; want ErrVersion", v, m, err)
		}
		if m, err := Open(context.Background(), b, "acme", kr); m != nil || !errors.Is(err, ErrVersion) {
			t.Errorf("Open(version %d) = %v, %v; want ErrVersion", v, m, err)
		}
	}
}

// setTenant rewrites the tenant field of a sealed manifest, keeping every
// other byte: it models moving a wrapped key to another tenant's name.
func setTenant(sealed []byte, tenant string) []byte {
	pub := int(binary.LittleEndian.Uint32(sealed[10:]))
	at := 14 + pub
	old := int(sealed[at])
	b := append([]byte(nil), sealed[:at]...)
	b = appendStr8(b, tenant)
	return append(b, sealed[at+1+old:]...)
}

func TestTenantIsolation(t *testing.T) {
	ctx := context.Background()
	kr := testKeyring(t, "isolation", "acme", "globex")
	m := smallManifest()
	sealed, err := Seal(ctx, m, "acme", kr)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("other tenant", func(t *testing.T) {
		got, err := Open(ctx, sealed, "globex", kr)
		if got != nil || !errors.Is(err, ErrWrongKey) || errors.Is(err, ErrCorrupt) {
			t.Errorf("Open(acme's manifest as globex) = %v, %v; want ErrWrongKey only", got, err)
		}
	})
	t.Run("other keyring", func(t *testing.T) {
		other := testKeyring(t, "another keyring", "acme")
		got, err := Open(ctx, sealed, "acme", other)
		if got != nil || !errors.Is(err, ErrWrongKey) {
			t.Errorf("Open(with another keyring's acme key) = %v, %v; want ErrWrongKey", got, err)
		}
	})
	t.Run("keyring without the tenant", func(t *testing.T) {
		none := testKeyring(t, "empty keyring", "globex")
		got, err := Open(ctx, sealed, "acme", none)
		if got != nil || !errors.Is(err, ErrNoKey) {
			t.Errorf("Open(keyring without acme) = %v, %v; want ErrNoKey", got, err)
		}
	})
	t.Run("wrapped key moved to another tenant", func(t *testing.T) {
		moved := setTenant(sealed, "globex")
		got, err := Open(ctx, moved, "globex", kr)
		if got != nil || !errors.Is(err, ErrWrongKey) {
			t.Errorf("Open(tenant field rewritten to globex) = %v, %v; want ErrWrongKey", got, err)
		}
		// Even if both tenants had the same KEK, the tenant name binds the
		// wrapped key and the ciphertext.
		same := testKeyring(t, "same keks", "acme")
		same.tenants["globex"] = same.tenants["acme"]
		sealed2, err := Seal(ctx, m, "acme", same)
		if err != nil {
			t.Fatal(err)
		}
		got, err = Open(ctx, setTenant(sealed2, "globex"), "globex", same)
		if got != nil || !errors.Is(err, ErrWrongKey) {
			t.Errorf("Open(moved, equal KEKs) = %v, %v; want ErrWrongKey", got, err)
		}
	})
	t.Run("public bytes hold no secret", func(t *testing.T) {
		pub, err := ReadPublic(sealed)
		if err != nil {
			t.Fatal(err)
		}
		if pub.Keys != nil || pub.Hints != nil || !cmp.Equal(pub.Config, Config{}) {
			t.Errorf("ReadPublic() = keys %v, hints %v, config %+v; want none", pub.Keys, pub.Hints, pub.Config)
		}
		for i, k := range m.Keys {
			if k != (chunk.Key{}) && bytes.Contains(sealed, k[:]) {
				t.Errorf("sealed bytes contain chunk %d's key in the clear", i)
			}
		}
		for _, s := range []string{m.Config.Entrypoint[0], m.Config.Env[0], m.Config.WorkingDir, m.Config.User} {
			if bytes.Contains(sealed, []byte(s)) {
				t.Errorf("sealed bytes contain config string %q in the clear", s)
			}
		}
	})
}

// envelopeWith builds a sealed-looking manifest around an arbitrary public
// part, for hostile-input tests (its ciphertext is garbage).
func envelopeWith(public []byte) []byte {
	b := append([]byte(magic), 1, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(public)))
	b = append(b, public...)
	b = appendStr8(b, "acme")
	b = binary.LittleEndian.AppendUint16(b, 60)
	b = append(b, make([]byte, 60+nonceSize)...)
	b = binary.LittleEndian.AppendUint32(b, tagSize)
	return append(b, make([]byte, tagSize)...)
}

func TestHostileLengths(t *testing.T) {
	pub := func(chunkSize uint32, imageSize uint64, count uint32, names int) []byte {
		b := appendStr8(nil, "r")
		b = binary.LittleEndian.AppendUint32(b, chunkSize)
		b = binary.LittleEndian.AppendUint64(b, imageSize)
		b = appendStr8(b, "ext4")
		b = append(b, 0)
		b = appendStr16(b, "")
		b = binary.LittleEndian.AppendUint32(b, count)
		return append(b, make([]byte, 32*names)...)
	}
	big := func(b []byte, at int, v uint32) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[at:], v)
		return b
	}
	ok := envelopeWith(pub(4096, 4096*2, 2, 2))
	if _, err := ReadPublic(ok); err != nil {
		t.Fatalf("ReadPublic(well-formed envelope) = %v", err)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"2^24 chunks claimed, 2 present", envelopeWith(pub(4096, 4096<<24, 1<<24, 2))},
		{"2^32-1 chunks claimed", envelopeWith(pub(4096, 4096*2, 0xffffffff, 2))},
		{"image size beyond int64", envelopeWith(pub(4096, 1<<63, 2, 2))},
		{"chunk count inconsistent with size", envelopeWith(pub(4096, 4096*3, 2, 2))},
		{"chunk size not a multiple of 4096", envelopeWith(pub(5000, 10000, 2, 2))},
		{"zero chunk size", envelopeWith(pub(0, 0, 0, 0))},
		{"public length 2^32-1", big(ok, 10, 0xffffffff)},
		{"ciphertext length 2^32-1", big(ok, len(ok)-tagSize-4, 0xffffffff)},
		{"ciphertext shorter than tag", big(ok, len(ok)-tagSize-4, 3)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			m, err := ReadPublic(tc.b)
			runtime.ReadMemStats(&after)
			if m != nil || !errors.Is(err, ErrCorrupt) {
				t.Errorf("ReadPublic() = %v, %v; want ErrCorrupt", m, err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
				t.Errorf("ReadPublic() of %d hostile bytes allocated %d bytes", len(tc.b), n)
			}
		})
	}
}

func TestID(t *testing.T) {
	// SHA-256("abc"), lower-case hex.
	if got, want := ID([]byte("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf(`ID("abc") = %s, want %s`, got, want)
	}
}
