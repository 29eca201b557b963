package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// Image pointers (images/<tenant>/<name>) are written only here: Put (a
// build), Swap (a recorded profile, the collector's copy-forward, Delete)
// and Remove (the collector dropping a deleted image's pointer). Swap and
// Remove are compare-and-swaps: they change the pointer only if it still
// equals what the caller read. On a store.Swapper (file, mem) that is
// atomic, and Put takes part in it, so no write is lost between the
// compare and the write; on s3 it is a compare-then-write that leaves a
// window of one request between the read and the write.

// ErrChanged means the pointer changed since the caller read it (another
// build, delete, recording or collection): Swap and Remove changed nothing.
var ErrChanged = errors.New("image pointer changed")

// Same reports whether two pointers name the same thing.
func Same(a, b store.Pointer) bool {
	return a.Root == b.Root && a.Manifest == b.Manifest && a.Deleted == b.Deleted && a.Created.Equal(b.Created)
}

// Put creates or replaces tenant's image name with p.
func Put(ctx context.Context, st store.Store, tenant, name string, p store.Pointer) error {
	key, err := imageKey(tenant, name)
	if err != nil {
		return err
	}
	sw, ok := st.(store.Swapper)
	for ok {
		cur, err := st.Get(ctx, key, nil)
		if errors.Is(err, store.ErrNotFound) {
			cur, err = nil, nil
		}
		if err != nil {
			return fmt.Errorf("storing image pointer %s/%s: %w", tenant, name, err)
		}
		err = sw.CompareAndSwap(ctx, key, cur, store.MarshalPointer(p))
		if !errors.Is(err, store.ErrChanged) {
			return wrapPointer("storing", tenant, name, err)
		}
	}
	return wrapPointer("storing", tenant, name, st.Put(ctx, key, store.MarshalPointer(p)))
}

// Swap replaces tenant's image name's pointer with p if it still equals
// old (Same); otherwise it returns an error wrapping ErrChanged.
func Swap(ctx context.Context, st store.Store, tenant, name string, old, p store.Pointer) error {
	return swap(ctx, st, tenant, name, old, store.MarshalPointer(p))
}

// Remove deletes tenant's image name's pointer if it still equals old;
// otherwise it returns an error wrapping ErrChanged.
func Remove(ctx context.Context, st store.Store, tenant, name string, old store.Pointer) error {
	return swap(ctx, st, tenant, name, old, nil)
}

func swap(ctx context.Context, st store.Store, tenant, name string, old store.Pointer, data []byte) error {
	verb := "storing"
	if data == nil {
		verb = "removing"
	}
	key, err := imageKey(tenant, name)
	if err != nil {
		return err
	}
	raw, err := st.Get(ctx, key, nil)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%s image pointer %s/%s: it is gone: %w", verb, tenant, name, ErrChanged)
	}
	if err != nil {
		return wrapPointer(verb, tenant, name, err)
	}
	cur, err := store.UnmarshalPointer(key, raw)
	if err != nil {
		return wrapPointer(verb, tenant, name, err)
	}
	if !Same(cur, old) {
		return fmt.Errorf("%s image pointer %s/%s: it now names manifest %s in %s, not %s in %s: %w",
			verb, tenant, name, cur.Manifest, cur.Root, old.Manifest, old.Root, ErrChanged)
	}
	if sw, ok := st.(store.Swapper); ok {
		err := sw.CompareAndSwap(ctx, key, raw, data)
		if errors.Is(err, store.ErrChanged) {
			return fmt.Errorf("%s image pointer %s/%s: %w", verb, tenant, name, ErrChanged)
		}
		return wrapPointer(verb, tenant, name, err)
	}
	if data == nil {
		return wrapPointer(verb, tenant, name, st.Delete(ctx, key))
	}
	return wrapPointer(verb, tenant, name, st.Put(ctx, key, data))
}

// StoreHints seals m (the manifest p names, with new hints: a recorded
// startup profile) for tenant, stores it beside p's manifest and swaps the
// image's pointer to it, keeping root and creation time. If the pointer no
// longer equals p the new manifest is removed and the error wraps
// ErrChanged. It returns the new manifest's id.
func StoreHints(ctx context.Context, st store.Store, kr manifest.Keyring, tenant, name string, p store.Pointer, m *manifest.Manifest) (string, error) {
	sealed, err := manifest.SealImage(ctx, m, tenant, name, kr)
	if err != nil {
		return "", fmt.Errorf("sealing the profiled manifest of %s/%s: %w", tenant, name, err)
	}
	id := manifest.ID(sealed)
	key := store.ManifestKey(p.Root, id)
	if err := st.PutIfAbsent(ctx, key, sealed); err != nil && !errors.Is(err, store.ErrExists) {
		return "", fmt.Errorf("storing manifest %s: %w", key, err)
	}
	np := store.Pointer{Root: p.Root, Manifest: id, Created: p.Created}
	if err := Swap(ctx, st, tenant, name, p, np); err != nil {
		if errors.Is(err, ErrChanged) {
			st.Delete(ctx, key)
		}
		return "", fmt.Errorf("recording a profile of %s/%s: %w", tenant, name, err)
	}
	return id, nil
}

func imageKey(tenant, name string) (string, error) {
	if err := store.ValidName("tenant", tenant); err != nil {
		return "", err
	}
	if err := store.ValidName("image", name); err != nil {
		return "", err
	}
	return store.ImageKey(tenant, name), nil
}

func wrapPointer(verb, tenant, name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s image pointer %s/%s: %w", verb, tenant, name, err)
}
