package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/profile"
)

func newImagesCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List the tenant's images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImages(cmd.Context(), all, stdout)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include deleted images")
	cmd.AddCommand(&cobra.Command{
		Use:   "delete NAME",
		Short: "Mark an image not live (its chunks go when garbage collection retires its root)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(cmd.Context())
			if err != nil {
				return err
			}
			if err := catalog.Delete(cmd.Context(), st, global.tenant, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "deleted %s/%s\n", global.tenant, args[0])
			return nil
		},
	})
	return cmd
}

func runImages(ctx context.Context, all bool, out io.Writer) error {
	st, err := openStore(ctx)
	if err != nil {
		return err
	}
	es, err := catalog.List(ctx, st, global.tenant, all)
	if err != nil {
		return err
	}
	return catalog.WriteList(ctx, st, es, out)
}

func newInspectCmd() *cobra.Command {
	var asJSON bool
	var heat string
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show an image's size, chunks, holes, sharing and entrypoint",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := runInspect(cmd.Context(), args[0], asJSON, stdout); err != nil || heat == "" {
				return err
			}
			return writeInspectHeatmap(cmd.Context(), args[0], heat, stderr) // heatmap.go
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&heat, "heatmap", "", "also draw the image's chunks (hole, shared, unique) as an SVG grid to this file")
	return cmd
}

func runInspect(ctx context.Context, name string, asJSON bool, out io.Writer) error {
	st, m, p, err := resolveImage(ctx, name)
	if err != nil {
		return err
	}
	sh, err := catalog.Share(ctx, st, m, p)
	if err != nil {
		return err
	}
	lp := profile.Summarize(ctx, st, profile.Image{Root: p.Root, ID: p.Manifest, M: m})
	return catalog.WriteInspection(out, global.tenant, name, m, p, sh, lp, asJSON)
}
