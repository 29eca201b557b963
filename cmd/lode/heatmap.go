package main

import (
	"context"
	"fmt"
	"io"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/heatmap"
)

// writeInspectHeatmap draws tenant's image name by chunk state to path.
func writeInspectHeatmap(ctx context.Context, name, path string, out io.Writer) error {
	st, m, p, err := resolveImage(ctx, name)
	if err != nil {
		return err
	}
	shared, sh, err := catalog.SharedChunks(ctx, st, m, p)
	if err != nil {
		return fmt.Errorf("comparing %s with the other images: %w", name, err)
	}
	if err := heatmap.WriteFile(path, heatmap.ForState(global.tenant+"/"+name, m, shared, sh.OtherImages, string(p.Root))); err != nil {
		return err
	}
	fmt.Fprintf(out, "heatmap:\t%s\n", path)
	return nil
}
