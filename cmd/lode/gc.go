package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/gc"
	"github.com/lode-dev/lode/internal/store"
)

func init() { extraCommands = append(extraCommands, newGCCmd) }

func newGCCmd() *cobra.Command {
	c := gc.DefaultConfig()
	var rotateNow bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Run one garbage-collection pass over the store's roots",
		Long: `Run one pass of the root garbage collector (docs/gc.md):
rotate the active root if it is older than --rotate-after, copy the live images
of retired roots forward into the active root, expire retired roots that have
been retired for --build-timeout and hold nothing live, and delete expired roots
past --grace that have no alarm. Safe to run while builds and mounts go on, and
to re-run after a crash. Run only one gc at a time per store.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGC(cmd.Context(), c, rotateNow, stdout)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&c.RotateAfter, "rotate-after", c.RotateAfter, "make a new active root when the active one is older than this")
	f.DurationVar(&c.Grace, "grace", c.Grace, "keep expired roots readable this long before deleting them (longer than any mount reads an old root)")
	f.DurationVar(&c.BuildTimeout, "build-timeout", c.BuildTimeout, "no build runs longer than this; retired roots settle this long before they expire")
	f.BoolVar(&c.DryRun, "dry-run", false, "print what the pass would do and how many bytes it would copy and free; change nothing")
	f.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "concurrent object copies and deletions")
	f.BoolVar(&rotateNow, "rotate-now", false, "rotate the active root now, whatever its age")
	cmd.AddCommand(&cobra.Command{
		Use:   "clear-alarm ROOT",
		Short: "Remove a root's alarm marker so gc may delete it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(cmd.Context())
			if err != nil {
				return err
			}
			root := store.RootID(args[0])
			a, err := store.ReadAlarm(cmd.Context(), st, root)
			if err != nil {
				return err
			}
			if err := store.ClearAlarm(cmd.Context(), st, root); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "cleared alarm of root %s (raised %s by image %s, chunk %q)\n", root, a.Time.Format("2006-01-02 15:04:05Z07:00"), a.Image, a.Chunk)
			return nil
		},
	})
	return cmd
}

func runGC(ctx context.Context, c gc.Config, rotateNow bool, out io.Writer) error {
	if err := c.Validate(); err != nil {
		return err
	}
	st, err := openStore(ctx)
	if err != nil {
		return err
	}
	c.Log = logger
	col := gc.NewCollector(st, c)
	if rotateNow && !c.DryRun {
		if _, err := col.RotateNow(ctx); err != nil {
			return err
		}
	}
	rep, err := col.Pass(ctx)
	fmt.Fprint(out, rep.String())
	return err
}
