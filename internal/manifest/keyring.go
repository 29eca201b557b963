package manifest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Keyring wraps and unwraps per-image data keys for tenants with each
// tenant's key-encryption key (KEK). Implementations: FileKeyring; a KMS
// client can implement it. Implementations must be safe for concurrent use;
// they neither keep nor modify the slices passed in, and return fresh ones.
//
// Wrap binds the wrapped key to tenant: Unwrap of it under any other tenant
// name must fail, even if two tenants' keys were equal.
type Keyring interface {
	// Wrap encrypts dataKey with tenant's KEK. ErrNoKey if tenant has none.
	Wrap(ctx context.Context, tenant string, dataKey []byte) ([]byte, error)
	// Unwrap decrypts a wrapped key. ErrNoKey if tenant has no KEK;
	// ErrWrongKey if the KEK does not open wrapped (another tenant's or
	// another keyring's key, or damaged bytes: the two look the same).
	Unwrap(ctx context.Context, tenant string, wrapped []byte) ([]byte, error)
}

// Keyring file errors.
var (
	// ErrExists: the keyring file, or a tenant's key, already exists.
	ErrExists = errors.New("already exists")
	// ErrInsecureKeyring: the keyring file is readable or writable by
	// users other than its owner.
	ErrInsecureKeyring = errors.New("keyring file is accessible to other users")
	// ErrStoreSecretLoaded: a worker was given a keyring that holds the
	// store secret (CheckWorker). Workers never need it.
	ErrStoreSecretLoaded = errors.New("keyring holds the store secret")
	// ErrNoStoreSecret: a builder was given a worker keyring, which has no
	// store secret (BuilderSecret).
	ErrNoStoreSecret = errors.New("keyring has no store secret")
)

const (
	keyringVersion = 1
	kekSize        = 32
	// StoreSecretSize is the length of the store secret (chunk.SecretSize).
	StoreSecretSize = 32
	// maxKeyringFile bounds what LoadFileKeyring reads.
	maxKeyringFile = 16 << 20
	// maxWrappedData bounds a data key FileKeyring wraps.
	maxWrappedData = 1024
)

// FileKeyring is the default Keyring: a JSON file, mode 0600, holding one
// random 32-byte KEK per tenant and the store secret. The store secret is
// not a tenant key: builders use it for convergent encryption of chunks
// (chunk.NewSealer), so every builder of one store must share it.
//
// The file is
//
//	{"version":1,"store_secret":"<base64 32 bytes>","tenants":{"<tenant>":"<base64 32 bytes>",…}}
//
// A builder's keyring holds the store secret and the keys of the tenants it
// builds for. A worker's keyring (Export) holds only the keys of the tenants
// it serves and no store secret: "store_secret" is absent. Workers check
// that with CheckWorker (DESIGN.md, "Who holds which key").
//
// A wrapped key is nonce (12 bytes) ‖ AES-256-GCM(KEK, nonce, data key,
// additional data = tenant name): 60 bytes for a 32-byte data key.
//
// Methods are safe for concurrent use. Changes (AddTenant) are kept in
// memory until Save.
type FileKeyring struct {
	path string
	rand io.Reader // randomness for keys and nonces; crypto/rand unless a test sets it

	saveMu sync.Mutex // orders Saves: the file always holds the latest snapshot

	mu         sync.RWMutex
	secret     []byte
	tenants    map[string][]byte
	kms        map[string]KMSKey // tenants whose key is in a KMS (kms.go)
	kmsDial    func(KMSKey) (KMS, error)
	kmsClients map[string]KMS
}

var _ Keyring = (*FileKeyring)(nil)

// keyringFile is the JSON form; []byte fields are base64.
type keyringFile struct {
	Version     int               `json:"version"`
	StoreSecret []byte            `json:"store_secret,omitempty"` // absent in a worker keyring
	Tenants     map[string][]byte `json:"tenants"`
	KMS         map[string]KMSKey `json:"kms,omitempty"` // tenants whose key is in a KMS
}

// LoadFileKeyring reads the keyring at path. A missing file is an error
// wrapping fs.ErrNotExist that says to run `lode keys create`. A file that
// users other than its owner can access (mode & 0077 != 0) is refused with
// ErrInsecureKeyring rather than used: it holds every tenant's key.
func LoadFileKeyring(path string) (*FileKeyring, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("loading keyring %s: no such file (create one with `lode keys create`): %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("loading keyring: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("loading keyring: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("loading keyring %s: mode %04o (run `chmod 600 %s`): %w", path, perm, path, ErrInsecureKeyring)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyringFile+1))
	if err != nil {
		return nil, fmt.Errorf("loading keyring: %w", err)
	}
	if len(b) > maxKeyringFile {
		return nil, fmt.Errorf("loading keyring %s: larger than %d bytes", path, maxKeyringFile)
	}
	var kf keyringFile
	if err := json.Unmarshal(b, &kf); err != nil {
		return nil, fmt.Errorf("loading keyring %s: %w", path, err)
	}
	if kf.Version != keyringVersion {
		return nil, fmt.Errorf("loading keyring %s: version %d (this lode reads version %d)", path, kf.Version, keyringVersion)
	}
	if len(kf.StoreSecret) != StoreSecretSize && len(kf.StoreSecret) != 0 {
		return nil, fmt.Errorf("loading keyring %s: store secret is %d bytes, want %d", path, len(kf.StoreSecret), StoreSecretSize)
	}
	k := &FileKeyring{path: path, rand: rand.Reader, tenants: make(map[string][]byte, len(kf.Tenants)), kms: map[string]KMSKey{}}
	if len(kf.StoreSecret) != 0 {
		k.secret = kf.StoreSecret
	}
	for t, kek := range kf.Tenants {
		if err := validName("tenant", t); err != nil {
			return nil, fmt.Errorf("loading keyring %s: %w", path, err)
		}
		if len(kek) != kekSize {
			return nil, fmt.Errorf("loading keyring %s: key of tenant %q is %d bytes, want %d", path, t, len(kek), kekSize)
		}
		k.tenants[t] = kek
	}
	for t, e := range kf.KMS {
		if err := validName("tenant", t); err != nil {
			return nil, fmt.Errorf("loading keyring %s: %w", path, err)
		}
		if _, ok := k.tenants[t]; ok {
			return nil, fmt.Errorf("loading keyring %s: tenant %q has both a key and a KMS key", path, t)
		}
		if e.KeyID == "" {
			return nil, fmt.Errorf("loading keyring %s: KMS key of tenant %q has no key_id", path, t)
		}
		k.kms[t] = e
	}
	return k, nil
}

// CreateFileKeyring creates a keyring at path with a fresh random store
// secret and no tenants, and writes it (mode 0600). If path exists it fails
// with an error wrapping ErrExists and fs.ErrExist, leaving the file alone.
func CreateFileKeyring(path string) (*FileKeyring, error) {
	return createFileKeyring(path, rand.Reader)
}

func createFileKeyring(path string, rnd io.Reader) (*FileKeyring, error) {
	k := &FileKeyring{path: path, rand: rnd, secret: make([]byte, StoreSecretSize), tenants: map[string][]byte{}, kms: map[string]KMSKey{}}
	if _, err := io.ReadFull(rnd, k.secret); err != nil {
		return nil, fmt.Errorf("creating keyring %s: reading random store secret: %w", path, err)
	}
	if err := k.create(); err != nil {
		return nil, fmt.Errorf("creating keyring %s: %w", path, err)
	}
	return k, nil
}

// create writes k to its path, which must not exist: a complete temporary
// file is linked into place, so the link fails if path exists and no reader
// ever sees a partial keyring.
func (k *FileKeyring) create() error {
	tmp, err := k.writeTemp()
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, k.path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w (%w)", ErrExists, fs.ErrExist)
		}
		return err
	}
	return syncDir(filepath.Dir(k.path))
}

// Save writes the keyring to its file atomically (a temporary file, fsync,
// rename, fsync of the directory) with mode 0600.
func (k *FileKeyring) Save() error {
	k.saveMu.Lock()
	defer k.saveMu.Unlock()
	tmp, err := k.writeTemp()
	if err != nil {
		return fmt.Errorf("saving keyring %s: %w", k.path, err)
	}
	if err := os.Rename(tmp, k.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving keyring: %w", err)
	}
	if err := syncDir(filepath.Dir(k.path)); err != nil {
		return fmt.Errorf("saving keyring %s: %w", k.path, err)
	}
	return nil
}

// writeTemp writes the keyring to a new 0600 file next to k.path and
// returns its name.
func (k *FileKeyring) writeTemp() (string, error) {
	k.mu.RLock()
	b, err := json.MarshalIndent(keyringFile{Version: keyringVersion, StoreSecret: k.secret, Tenants: k.tenants, KMS: k.kms}, "", "  ")
	k.mu.RUnlock()
	if err != nil {
		return "", fmt.Errorf("encoding keyring: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(k.path), "."+filepath.Base(k.path)+".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o600) // CreateTemp already uses 0600; say it explicitly
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// Path returns the keyring's file.
func (k *FileKeyring) Path() string { return k.path }

// AddTenant gives tenant a new random KEK (in memory; call Save). It fails
// with ErrExists if tenant already has one: replacing a KEK would make
// every manifest sealed for the tenant unreadable.
func (k *FileKeyring) AddTenant(tenant string) error {
	if err := validName("tenant", tenant); err != nil {
		return fmt.Errorf("adding tenant: %w", err)
	}
	kek := make([]byte, kekSize)
	if _, err := io.ReadFull(k.rand, kek); err != nil {
		return fmt.Errorf("adding tenant %q: reading random key: %w", tenant, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.tenants[tenant]; ok {
		return fmt.Errorf("adding tenant %q: key %w", tenant, ErrExists)
	}
	if _, ok := k.kms[tenant]; ok {
		return fmt.Errorf("adding tenant %q: KMS key %w", tenant, ErrExists)
	}
	k.tenants[tenant] = kek
	return nil
}

// Tenants returns the tenants that have a key, sorted.
func (k *FileKeyring) Tenants() []string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	ts := make([]string, 0, len(k.tenants)+len(k.kms))
	for t := range k.tenants {
		ts = append(ts, t)
	}
	for t := range k.kms {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// HasTenant reports whether tenant has a key.
func (k *FileKeyring) HasTenant(tenant string) bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	_, ok := k.tenants[tenant]
	_, inKMS := k.kms[tenant]
	return ok || inKMS
}

// StoreSecret returns a copy of the store secret (for chunk.NewSealer), or
// nil for a worker keyring.
func (k *FileKeyring) StoreSecret() []byte {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return slices.Clone(k.secret)
}

// HasStoreSecret reports whether the keyring holds the store secret (a
// builder's keyring does, a worker's does not).
func (k *FileKeyring) HasStoreSecret() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.secret != nil
}

// BuilderSecret returns the store secret for a build, or an error wrapping
// ErrNoStoreSecret when this is a worker keyring.
func (k *FileKeyring) BuilderSecret() ([]byte, error) {
	if s := k.StoreSecret(); s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("keyring %s is a worker keyring (made by `lode keys export`): builds need the builder's keyring, which holds the store secret: %w", k.path, ErrNoStoreSecret)
}

// CheckWorker returns an error wrapping ErrStoreSecretLoaded if the keyring
// holds the store secret. A worker serving tenants' images never needs it,
// and a worker holding it can confirm that a known plaintext chunk is
// stored (the presence test the secret exists to prevent); a leak of one
// worker's keyring would give that away for every tenant. Callers refuse to
// start unless told otherwise by their operator.
func (k *FileKeyring) CheckWorker() error {
	if !k.HasStoreSecret() {
		return nil
	}
	return fmt.Errorf("keyring %s holds the store secret, which only builders need (make a worker keyring with `lode keys export --tenant T --out FILE`): %w", k.path, ErrStoreSecretLoaded)
}

// Export writes a worker keyring to path (mode 0600; it must not exist):
// the keys of the listed tenants only, and no store secret. Every listed
// tenant must have a key here (else an error wrapping ErrNoKey, and nothing
// is written).
func (k *FileKeyring) Export(path string, tenants []string) (*FileKeyring, error) {
	if len(tenants) == 0 {
		return nil, fmt.Errorf("exporting keyring to %s: no tenant named", path)
	}
	out := &FileKeyring{path: path, rand: k.rand, tenants: map[string][]byte{}, kms: map[string]KMSKey{}}
	k.mu.RLock()
	for _, t := range tenants {
		if e, ok := k.kms[t]; ok {
			e.Previous = slices.Clone(e.Previous)
			out.kms[t] = e
			continue
		}
		kek, ok := k.tenants[t]
		if !ok {
			k.mu.RUnlock()
			return nil, fmt.Errorf("exporting keyring to %s: tenant %q in keyring %s: %w", path, t, k.path, ErrNoKey)
		}
		out.tenants[t] = slices.Clone(kek)
	}
	k.mu.RUnlock()
	if err := out.create(); err != nil {
		return nil, fmt.Errorf("exporting keyring to %s: %w", path, err)
	}
	return out, nil
}

func (k *FileKeyring) kek(tenant string) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	kek, ok := k.tenants[tenant]
	if _, inKMS := k.kms[tenant]; inKMS {
		return nil, fmt.Errorf("tenant %q: its key is in KMS, which binds each data key to an image (use SealImage and OpenImage): %w", tenant, ErrNoKey)
	}
	if !ok {
		return nil, fmt.Errorf("tenant %q: keyring %s holds no key for it (a worker keyring holds only the tenants that worker serves; export one with `lode keys export --tenant %s`): %w", tenant, k.path, tenant, ErrNoKey)
	}
	return kek, nil
}

// Wrap encrypts dataKey (1 to 1024 bytes) with tenant's KEK under a random
// nonce, binding it to the tenant name. ErrNoKey if tenant has no KEK.
func (k *FileKeyring) Wrap(ctx context.Context, tenant string, dataKey []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(dataKey) == 0 || len(dataKey) > maxWrappedData {
		return nil, fmt.Errorf("wrapping data key for tenant %q: %d bytes, want 1 to %d", tenant, len(dataKey), maxWrappedData)
	}
	kek, err := k.kek(tenant)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nonceSize, nonceSize+len(dataKey)+tagSize)
	if _, err := io.ReadFull(k.rand, out); err != nil {
		return nil, fmt.Errorf("wrapping data key for tenant %q: reading random nonce: %w", tenant, err)
	}
	return aead.Seal(out, out[:nonceSize], dataKey, []byte(tenant)), nil
}

// Unwrap reverses Wrap. ErrNoKey if tenant has no KEK; ErrWrongKey if the
// KEK (and tenant name) do not authenticate wrapped.
func (k *FileKeyring) Unwrap(ctx context.Context, tenant string, wrapped []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	kek, err := k.kek(tenant)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < nonceSize+tagSize+1 {
		return nil, fmt.Errorf("unwrapping data key for tenant %q: %d bytes is too short: %w", tenant, len(wrapped), ErrWrongKey)
	}
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	dk, err := aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], []byte(tenant))
	if err != nil {
		return nil, fmt.Errorf("unwrapping data key for tenant %q with keyring %s: %w", tenant, k.path, ErrWrongKey)
	}
	return dk, nil
}

// EnsureTenantKey is `lode keys create`: it creates the keyring file at path
// (and its directory, mode 0700) with a fresh store secret if there is none
// (created), then adds and saves a key for tenant unless it has one (added).
func EnsureTenantKey(path, tenant string) (created, added bool, err error) {
	kr, err := LoadFileKeyring(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return false, false, fmt.Errorf("creating keyring directory: %w", err)
		}
		kr, err = CreateFileKeyring(path)
		created = err == nil
	}
	if err != nil || kr.HasTenant(tenant) {
		return created, false, err
	}
	if err := kr.AddTenant(tenant); err != nil {
		return created, false, err
	}
	return created, true, kr.Save()
}
