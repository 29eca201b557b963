package heatmap

// image.go: the pictures lode draws of an image's chunks (issue #8):
// `lode inspect NAME --heatmap FILE` by state (ForState) and `lode run NAME
// --heatmap FILE` by the tier that served each chunk (ForRun).

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
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

// WriteFile draws m as SVG to path (which must end in .svg).
func WriteFile(path string, m Map) error {
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

// describe titles a picture of image name.
func describe(name string, m *manifest.Manifest) string {
	z := ""
	if m.Compression == manifest.CompressionZstd {
		z = ", zstd"
	}
	return fmt.Sprintf("%s: %s, %d chunks of %s%s", name, humanize.IBytes(uint64(m.ImageSize)), len(m.Names),
		humanize.IBytes(uint64(m.ChunkSize)), z)
}

// ForRun maps each chunk of a run of image name to the tier that served it:
// served[i] is an index into tiers, or none (never read) or mem (read from
// the memory cache only), as agent.Image.ChunkTiers reports it.
func ForRun(name string, m *manifest.Manifest, tiers []string, served []int, none, mem int) Map {
	classes := []Class{{Label: "hole", Color: colorHole}, {Label: "not read", Color: colorUnread}, {Label: "memory cache", Color: colorMemory}}
	spares := []string{colorSpareA, colorSpareB}
	for i, t := range tiers {
		c := map[string]string{"disk": colorDisk, "fleet": colorFleet, "origin": colorOrigin}[t]
		if c == "" {
			c = spares[i%len(spares)]
		}
		classes = append(classes, Class{Label: "tier " + t, Color: c})
	}
	cells := make([]int, len(m.Names))
	for i := range cells {
		switch s := served[i]; {
		case m.Names[i].IsZero():
			cells[i] = 0
		case s == none:
			cells[i] = 1
		case s == mem:
			cells[i] = 2
		default:
			cells[i] = 3 + s
		}
	}
	cols, cell := gridFor(len(cells))
	return Map{Title: describe(name, m), Subtitle: "each chunk by the tier that served it in this run",
		Classes: classes, Cells: cells, Columns: cols, CellSize: cell}
}

// ForState maps each chunk of image name to hole, shared (shared[n]: as
// catalog.SharedChunks counts for lode inspect, against nOthers other live
// images in root) or unique.
func ForState(name string, m *manifest.Manifest, others map[chunk.Name]bool, nOthers int, root string) Map {
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
	return Map{
		Title:    describe(name, m),
		Subtitle: fmt.Sprintf("each chunk by state, against %d other live images in root %s", nOthers, root),
		Classes: []Class{{Label: "hole (not stored)", Color: colorHole},
			{Label: "shared with other images", Color: colorShared}, {Label: "unique to this image", Color: colorUnique}},
		Cells: cells, Columns: cols, CellSize: cell,
	}
}
