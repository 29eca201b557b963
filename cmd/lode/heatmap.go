package main

// heatmap.go: pictures of an image's chunks (issue #8): `lode inspect NAME
// --heatmap FILE` by state (hole, shared with other images, unique), and
// `lode run NAME --heatmap FILE` by the tier that served each chunk.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/heatmap"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/worker"
)

// Colors of the classes. Tiers get theirs by name; unknown tiers the spares.
const (
	colorHole   = "#d9d9d9"
	colorShared = "#4c9be8"
	colorUnique = "#e8743b"
	colorUnread = "#f3efe0"
	colorMemory = "#9467bd"
	colorDisk   = "#2ca02c"
	colorFleet  = "#1f77b4"
	colorOrigin = "#d62728"
	colorSpareA = "#8c564b"
	colorSpareB = "#17becf"
)

// gridFor picks columns and cell size for n chunks: 64 × 8 px up to 4096
// chunks (2 GiB at 512 KiB), then 128 × 4 px.
func gridFor(n int) (cols, cell int) {
	if n <= 4096 {
		return 64, 8
	}
	return 128, 4
}

func writeSVGFile(path string, m heatmap.Map) error {
	if !strings.HasSuffix(strings.ToLower(path), ".svg") {
		return fmt.Errorf("writing heatmap %s: only SVG is drawn; name the file .svg (rsvg-convert makes a PNG)", path)
	}
	var b bytes.Buffer
	if err := m.WriteSVG(&b); err != nil {
		return fmt.Errorf("drawing heatmap %s: %w", path, err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing heatmap: %w", err)
	}
	return nil
}

func describe(name string, m *manifest.Manifest) string {
	z := ""
	if m.Compression == manifest.CompressionZstd {
		z = ", zstd"
	}
	return fmt.Sprintf("%s: %s, %d chunks of %s%s", name, humanize.IBytes(uint64(m.ImageSize)), len(m.Names),
		humanize.IBytes(uint64(m.ChunkSize)), z)
}

// runHeatmap maps each chunk of a run to its serving tier.
func runHeatmap(name string, m *manifest.Manifest, tiers []string, served []int) heatmap.Map {
	classes := []heatmap.Class{{Label: "hole", Color: colorHole}, {Label: "not read", Color: colorUnread}, {Label: "memory cache", Color: colorMemory}}
	spares := []string{colorSpareA, colorSpareB}
	for i, t := range tiers {
		c := map[string]string{"disk": colorDisk, "fleet": colorFleet, "origin": colorOrigin}[t]
		if c == "" {
			c = spares[i%len(spares)]
		}
		classes = append(classes, heatmap.Class{Label: "tier " + t, Color: c})
	}
	cells := make([]int, len(m.Names))
	for i := range cells {
		switch s := served[i]; {
		case m.Names[i].IsZero():
			cells[i] = 0
		case s == agent.ServedNone:
			cells[i] = 1
		case s == agent.ServedMem:
			cells[i] = 2
		default:
			cells[i] = 3 + s
		}
	}
	cols, cell := gridFor(len(cells))
	return heatmap.Map{Title: describe(name, m), Subtitle: "each chunk by the tier that served it in this run",
		Classes: classes, Cells: cells, Columns: cols, CellSize: cell}
}

// writeRunHeatmap draws w's image by serving tier to path.
func writeRunHeatmap(w *worker.Image, path string) error {
	s := w.Image.Stats()
	tiers := make([]string, len(s.Tiers))
	for i, t := range s.Tiers {
		tiers[i] = t.Tier
	}
	return writeSVGFile(path, runHeatmap(w.Name, w.Manifest, tiers, w.Image.ChunkTiers()))
}

// stateHeatmap maps each chunk to hole, shared (catalog.SharedChunks:
// another live image's manifest in the same root names it, as lode inspect
// counts) or unique.
func stateHeatmap(name string, m *manifest.Manifest, others map[chunk.Name]bool, nOthers int, root store.RootID) heatmap.Map {
	cells := make([]int, len(m.Names))
	for i, n := range m.Names {
		switch {
		case n.IsZero():
			cells[i] = 0
		case others[n]:
			cells[i] = 1
		default:
			cells[i] = 2
		}
	}
	cols, cell := gridFor(len(cells))
	return heatmap.Map{
		Title:    describe(name, m),
		Subtitle: fmt.Sprintf("each chunk by state, against %d other live images in root %s", nOthers, root),
		Classes: []heatmap.Class{{Label: "hole (not stored)", Color: colorHole},
			{Label: "shared with other images", Color: colorShared}, {Label: "unique to this image", Color: colorUnique}},
		Cells: cells, Columns: cols, CellSize: cell,
	}
}

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
	if err := writeSVGFile(path, stateHeatmap(global.tenant+"/"+name, m, shared, sh.OtherImages, p.Root)); err != nil {
		return err
	}
	fmt.Fprintf(out, "heatmap:\t%s\n", path)
	return nil
}
