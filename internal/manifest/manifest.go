package manifest

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"weak"

	"github.com/lode-dev/lode/internal/chunk"
)

// Version is the manifest format version written by this code. Version 2
// added the source fields (SourceRef, SourceIndexDigest, DiffIDs) to the
// public part; version 1 manifests still open (with those fields empty).
const Version = 2

// minVersion is the oldest format version this code reads.
const minVersion = 1

// Sentinel errors.
var (
	// ErrWrongKey: the tenant key cannot unwrap the manifest's data key (wrong
	// tenant, wrong keyring) — the manifest is not readable by this caller.
	ErrWrongKey = errors.New("wrong tenant key")
	// ErrNoKey: the keyring has no key for the tenant.
	ErrNoKey = errors.New("no key for tenant")
	// ErrCorrupt: the bytes are not a well-formed manifest, or authentication
	// of the public or secret part failed.
	ErrCorrupt = errors.New("manifest corrupt")
	// ErrVersion: the manifest was written by an unknown format version.
	ErrVersion = errors.New("unsupported manifest version")
)

// Config is the part of the image's OCI config a worker needs to start it.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
}

// Manifest describes one built image. The public fields are readable
// without any key (the garbage collector copies chunks using them); the
// secret fields are only readable with the tenant's key.
type Manifest struct {
	// Public part.
	// Root is the root the image was built in, whose id salted its chunks.
	// The image pointer, not this field, says where the manifest and its
	// chunks live now: copying forward into a new root keeps these bytes.
	Root      string
	ChunkSize int    // bytes per chunk; the last chunk may be short
	ImageSize int64  // bytes of the filesystem image
	FSType    string // "ext4"
	// Compression of each chunk's plaintext before sealing: CompressionNone
	// or CompressionZstd.
	Compression uint8
	// Names holds one entry per chunk: the chunk's name, or the zero Name for
	// a hole.
	Names []chunk.Name
	// SourceDigest is the digest of the source image's manifest (registry,
	// OCI layout), of its config (docker-archive) or of the rootfs tar.
	SourceDigest string
	// SourceRef is the source as given to the build, e.g.
	// "docker://registry.example:5000/app:1.2" (format version 2; "" before).
	SourceRef string
	// SourceIndexDigest is the digest of the image index the manifest was
	// chosen from by platform, "" when the source named a manifest (v2).
	SourceIndexDigest string
	// DiffIDs are the digests of the source's uncompressed layers, base
	// first, as its config lists them (v2; empty for rootfs and before).
	// ChainIDs derives the layers' chain IDs from them.
	DiffIDs []string

	// Secret part.
	Keys   []chunk.Key // one per chunk, zero for holes; len(Keys) == len(Names)
	Config Config
	// Hints lists chunk indexes in the order a start read them (may be empty).
	Hints []uint32
}

// SubKey derives a 32-byte key for purpose (e.g. "profile v1") from the
// data key the manifest was sealed with: HKDF-SHA256 of a secret Open
// derived from the data key, with purpose in the info. Objects that belong
// to this manifest and only its tenant may read (internal/profile's learned
// startup profiles) are sealed under such keys, so a worker that can open
// the manifest can seal and open them without any store secret. ok is false
// unless m is a manifest Open returned (not a built one, nor a copy of *m).
//
// The secret is kept beside the manifest (subkeyRoots), not in a field, so
// that comparing manifests (go-cmp, reflect.DeepEqual) is unaffected.
func (m *Manifest) SubKey(purpose string) (key []byte, ok bool) {
	subkeyRoots.Lock()
	root := subkeyRoots.m[weak.Make(m)]
	subkeyRoots.Unlock()
	if root == nil {
		return nil, false
	}
	k, err := hkdf.Expand(sha256.New, root[:], "lode manifest subkey: "+purpose, keySize)
	if err != nil {
		return nil, false
	}
	return k, true
}

// subkeyRoots holds the subkey root of every opened manifest still alive,
// by weak pointer; a cleanup removes (and clears) it when the manifest is
// collected.
var subkeyRoots struct {
	sync.Mutex
	m map[weak.Pointer[Manifest]]*[keySize]byte
}

// deriveSubkeys keeps m's subkey root, derived from its data key.
func (m *Manifest) deriveSubkeys(dataKey []byte) error {
	k, err := hkdf.Extract(sha256.New, dataKey, []byte("lode manifest subkeys v1"))
	if err != nil {
		return fmt.Errorf("deriving manifest subkeys: %w", err)
	}
	root := new([keySize]byte)
	copy(root[:], k)
	clear(k)
	wp := weak.Make(m)
	subkeyRoots.Lock()
	if subkeyRoots.m == nil {
		subkeyRoots.m = make(map[weak.Pointer[Manifest]]*[keySize]byte)
	}
	subkeyRoots.m[wp] = root
	subkeyRoots.Unlock()
	runtime.AddCleanup(m, func(wp weak.Pointer[Manifest]) {
		subkeyRoots.Lock()
		if r := subkeyRoots.m[wp]; r != nil {
			clear(r[:])
			delete(subkeyRoots.m, wp)
		}
		subkeyRoots.Unlock()
	}, wp)
	return nil
}

// Ref returns the chunk reference of chunk i.
func (m *Manifest) Ref(i int) chunk.Ref { return chunk.Ref{Name: m.Names[i], Key: m.Keys[i]} }

// Holes counts the chunks that are holes.
func (m *Manifest) Holes() int {
	n := 0
	for _, name := range m.Names {
		if name.IsZero() {
			n++
		}
	}
	return n
}

// ChainIDs returns the chain IDs of m's source layers (OCI image spec,
// "Layer ChainID"): the first is the base layer's diff ID, each next one is
// the SHA-256 of "<previous chain ID> <diff ID>". The last names the whole
// layer stack, the key a containerd snapshotter sees for the top layer.
func (m *Manifest) ChainIDs() []string {
	return ChainIDs(m.DiffIDs)
}

// ChainIDs computes chain IDs from diff IDs (see Manifest.ChainIDs).
func ChainIDs(diffIDs []string) []string {
	if len(diffIDs) == 0 {
		return nil
	}
	out := make([]string, len(diffIDs))
	out[0] = diffIDs[0]
	for i := 1; i < len(diffIDs); i++ {
		sum := sha256.Sum256([]byte(out[i-1] + " " + diffIDs[i]))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}
