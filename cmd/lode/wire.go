package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/storeurl"
)

// wire.go is the one place that composes backends and tiers.

func openStore(ctx context.Context) (store.Store, error) {
	st, err := storeurl.Open(ctx, global.storeLocation(), logger)
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
	return kr, err
}
