package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/kms"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/storeurl"
)

// wire.go is the one place that composes backends and tiers.

func openStore(ctx context.Context) (store.Store, error) {
	return openStoreWith(ctx, storeurl.Open)
}

func openStoreWith(ctx context.Context, open func(context.Context, string, *slog.Logger) (store.Store, error)) (store.Store, error) {
	st, err := open(ctx, global.storeLocation(), logger)
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", global.storeLocation(), err)
	}
	return st, nil
}

func openKeyring() (*manifest.FileKeyring, error) {
	kr, err := manifest.LoadFileKeyring(global.keyringPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no keyring at %s: run `lode keys create --tenant %s` first: %w", global.keyringPath(), global.tenant, err)
	}
	if err != nil {
		return nil, err
	}
	kr.SetKMS(kms.Dial) // tenants whose key is in AWS KMS (lode keys kms)
	return kr, nil
}

// resolveImage opens the store and keyring and resolves the tenant's image
// name: what every one-shot command that reads an image does first.
func resolveImage(ctx context.Context, name string) (store.Store, *manifest.Manifest, store.Pointer, error) {
	st, err := openStoreWith(ctx, storeurl.OpenLazy) // the bucket check beside the first GET

	if err != nil {
		return nil, nil, store.Pointer{}, err
	}
	kr, err := openKeyring()
	if err != nil {
		return nil, nil, store.Pointer{}, err
	}
	m, p, err := catalog.Resolve(ctx, st, kr, global.tenant, name)
	if err != nil {
		return nil, nil, p, err
	}
	return st, m, p, nil
}
