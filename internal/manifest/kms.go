package manifest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrKMSUnavailable: the KMS holding a tenant's key could not be reached or
// did not answer in time. Images already open keep serving (their chunk keys
// are in memory); opening or sealing a manifest of that tenant fails fast
// with it until the KMS is back.
var ErrKMSUnavailable = errors.New("KMS unavailable")

// KMS is a key management service that makes and unwraps data keys under a
// named master key, as AWS KMS's GenerateDataKey and Decrypt do. The
// encryption context is bound into the wrapped key: Decrypt under any other
// context must fail. internal/kms adapts AWS KMS (aws-sdk-go-v2) to it.
//
// Errors: ErrWrongKey (wrapped by another key, damaged, or another context)
// and ErrKMSUnavailable (unreachable, throttled, timed out) must be wrapped
// so callers can tell a refusal from an outage.
type KMS interface {
	// GenerateDataKey returns a fresh 32-byte data key and its wrapped form.
	GenerateDataKey(ctx context.Context, keyID string, encCtx map[string]string) (dataKey, wrapped []byte, err error)
	// Decrypt unwraps wrapped and returns the data key and the ID (ARN) of
	// the master key that wrapped it.
	Decrypt(ctx context.Context, wrapped []byte, encCtx map[string]string) (dataKey []byte, keyID string, err error)
}

// KMSKey is a keyring entry naming a tenant's master key in a KMS instead of
// holding the key: the key never leaves the KMS, and the worker's disk holds
// only this entry. Data keys are generated and unwrapped by the KMS, bound
// to the tenant and the image by the encryption context (EncryptionContext).
type KMSKey struct {
	// KeyID is the master key that wraps new images' data keys: a key ID or
	// key ARN (not an alias: Decrypt reports key ARNs, which are checked
	// against KeyID and Previous).
	KeyID string `json:"key_id"`
	// Previous lists master keys this tenant used before a rotation
	// (RotateKMSKey): manifests they wrapped still open. Removing one
	// retires every manifest it wrapped.
	Previous []string `json:"previous_key_ids,omitempty"`
	// Region of the KMS (default: the AWS SDK's from the environment).
	Region string `json:"region,omitempty"`
	// Endpoint overrides the KMS URL (a KMS-protocol server other than
	// AWS's, e.g. local-kms in tests); empty for AWS.
	Endpoint string `json:"endpoint,omitempty"`
}

// accepts reports whether arn (from Decrypt) is the current or a previous
// master key of the entry. An entry may hold a bare key ID or an ARN.
func (k KMSKey) accepts(arn string) bool {
	for _, id := range append([]string{k.KeyID}, k.Previous...) {
		if id == arn || strings.HasSuffix(arn, ":key/"+id) {
			return true
		}
	}
	return false
}

// EncryptionContext is the KMS encryption context of one image's data key:
// it names the tenant and the image, so a wrapped key moved to another
// image's manifest, or to another tenant, does not unwrap.
func EncryptionContext(tenant, image string) map[string]string {
	return map[string]string{"lode:tenant": tenant, "lode:image": image}
}

// ImageKeyring is a Keyring that can bind a tenant's data keys to one image
// (a KMS encryption context). SealImage and OpenImage use it for tenants
// for which BindsImages is true, and Wrap and Unwrap otherwise.
type ImageKeyring interface {
	Keyring
	// BindsImages reports whether tenant's data keys are generated and
	// unwrapped per image (GenerateDataKey, UnwrapImage).
	BindsImages(tenant string) bool
	// GenerateDataKey returns a fresh data key for tenant's image and its
	// wrapped form.
	GenerateDataKey(ctx context.Context, tenant, image string) (dataKey, wrapped []byte, err error)
	// UnwrapImage unwraps the data key of tenant's image. ErrWrongKey when
	// wrapped was not made for this tenant and image under an accepted key.
	UnwrapImage(ctx context.Context, tenant, image string, wrapped []byte) ([]byte, error)
}

var _ ImageKeyring = (*FileKeyring)(nil)

// SetKMS sets how the keyring reaches the KMS of a KMSKey entry (for
// example kms.Dial). Without it, tenants whose key is in a KMS cannot be
// used. Clients are made once per entry and reused.
func (k *FileKeyring) SetKMS(dial func(KMSKey) (KMS, error)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kmsDial = dial
	k.kmsClients = map[string]KMS{}
}

// AddKMSTenant records that tenant's master key is key in a KMS (in memory;
// call Save). ErrExists if tenant already has a key of either kind.
func (k *FileKeyring) AddKMSTenant(tenant string, key KMSKey) error {
	if err := validName("tenant", tenant); err != nil {
		return fmt.Errorf("adding tenant: %w", err)
	}
	if key.KeyID == "" {
		return fmt.Errorf("adding tenant %q: empty KMS key ID", tenant)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.tenants[tenant]; ok {
		return fmt.Errorf("adding tenant %q: key %w", tenant, ErrExists)
	}
	if _, ok := k.kms[tenant]; ok {
		return fmt.Errorf("adding tenant %q: KMS key %w", tenant, ErrExists)
	}
	key.Previous = slices.Clone(key.Previous)
	k.kms[tenant] = key
	return nil
}

// RotateKMSKey makes keyID the master key of tenant's new images (in
// memory; call Save). The old key joins Previous, so every manifest it
// wrapped still opens.
func (k *FileKeyring) RotateKMSKey(tenant, keyID string) error {
	if keyID == "" {
		return fmt.Errorf("rotating the KMS key of tenant %q: empty key ID", tenant)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.kms[tenant]
	if !ok {
		return fmt.Errorf("rotating the KMS key of tenant %q: keyring %s names no KMS key for it: %w", tenant, k.path, ErrNoKey)
	}
	if e.KeyID == keyID {
		return nil
	}
	prev := slices.DeleteFunc(append([]string{e.KeyID}, e.Previous...), func(s string) bool { return s == keyID })
	e.KeyID, e.Previous = keyID, slices.Compact(prev)
	k.kms[tenant] = e
	return nil
}

// KMSKeyOf returns tenant's KMS entry, if its key is in a KMS.
func (k *FileKeyring) KMSKeyOf(tenant string) (KMSKey, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	e, ok := k.kms[tenant]
	return e, ok
}

// BindsImages is true for tenants whose key is in a KMS.
func (k *FileKeyring) BindsImages(tenant string) bool {
	_, ok := k.KMSKeyOf(tenant)
	return ok
}

// kmsFor returns tenant's entry and a client for its KMS.
func (k *FileKeyring) kmsFor(tenant string) (KMSKey, KMS, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.kms[tenant]
	if !ok {
		return e, nil, fmt.Errorf("tenant %q: keyring %s names no KMS key for it: %w", tenant, k.path, ErrNoKey)
	}
	if k.kmsDial == nil {
		return e, nil, fmt.Errorf("tenant %q: its key is in KMS (%s) but this process has no KMS client: %w", tenant, e.KeyID, ErrKMSUnavailable)
	}
	id := e.Region + "\x00" + e.Endpoint
	if c, ok := k.kmsClients[id]; ok {
		return e, c, nil
	}
	c, err := k.kmsDial(e)
	if err != nil {
		return e, nil, fmt.Errorf("tenant %q: connecting to KMS for key %s: %w: %w", tenant, e.KeyID, ErrKMSUnavailable, err)
	}
	k.kmsClients[id] = c
	return e, c, nil
}

// GenerateDataKey implements ImageKeyring: for a tenant whose key is in a
// KMS it asks the KMS for a data key bound to tenant and image; for a
// tenant with a file key it makes a random key and wraps it (image is then
// not bound: the file format predates it).
func (k *FileKeyring) GenerateDataKey(ctx context.Context, tenant, image string) ([]byte, []byte, error) {
	if !k.BindsImages(tenant) {
		dk := make([]byte, keySize)
		if _, err := k.rand.Read(dk); err != nil {
			return nil, nil, fmt.Errorf("generating data key for tenant %q: %w", tenant, err)
		}
		w, err := k.Wrap(ctx, tenant, dk)
		return dk, w, err
	}
	if image == "" {
		return nil, nil, fmt.Errorf("generating data key for tenant %q: its key is in KMS, which binds data keys to an image name, and none was given", tenant)
	}
	e, c, err := k.kmsFor(tenant)
	if err != nil {
		return nil, nil, err
	}
	dk, w, err := c.GenerateDataKey(ctx, e.KeyID, EncryptionContext(tenant, image))
	if err != nil {
		return nil, nil, fmt.Errorf("generating data key for image %s/%s with KMS key %s: %w", tenant, image, e.KeyID, err)
	}
	if len(dk) != keySize {
		clear(dk)
		return nil, nil, fmt.Errorf("generating data key for image %s/%s with KMS key %s: %d bytes, want %d", tenant, image, e.KeyID, len(dk), keySize)
	}
	return dk, w, nil
}

// UnwrapImage implements ImageKeyring. For a KMS tenant, the KMS checks the
// encryption context (tenant and image), and the key that wrapped it must
// be the entry's current or a previous key.
func (k *FileKeyring) UnwrapImage(ctx context.Context, tenant, image string, wrapped []byte) ([]byte, error) {
	if !k.BindsImages(tenant) {
		return k.Unwrap(ctx, tenant, wrapped)
	}
	e, c, err := k.kmsFor(tenant)
	if err != nil {
		return nil, err
	}
	dk, arn, err := c.Decrypt(ctx, wrapped, EncryptionContext(tenant, image))
	if err != nil {
		return nil, fmt.Errorf("unwrapping the data key of image %s/%s with KMS: %w", tenant, image, err)
	}
	if !e.accepts(arn) {
		clear(dk)
		return nil, fmt.Errorf("unwrapping the data key of image %s/%s: KMS key %s wrapped it, which is not tenant %q's key %s nor a previous one: %w", tenant, image, arn, tenant, e.KeyID, ErrWrongKey)
	}
	return dk, nil
}

// SetKMSKey is `lode keys kms`: it makes key the tenant's KMS master key,
// rotating to key.KeyID if the tenant is already in KMS, and saves the
// keyring.
func (k *FileKeyring) SetKMSKey(tenant string, key KMSKey) error {
	var err error
	if _, ok := k.KMSKeyOf(tenant); ok {
		err = k.RotateKMSKey(tenant, key.KeyID)
	} else {
		err = k.AddKMSTenant(tenant, key)
	}
	if err != nil {
		return err
	}
	return k.Save()
}
