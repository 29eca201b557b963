package heatmap

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrInvalid: the Map cannot be drawn (a cell names no class, a color is not
// #rrggbb, no classes).
var ErrInvalid = errors.New("invalid heatmap")

// Class is one kind of cell: its legend label and fill color.
type Class struct {
	Label string
	Color string // "#rrggbb"
}

// Map is what to draw.
type Map struct {
	Title    string // first line above the grid (may be empty)
	Subtitle string // second line (may be empty)
	Classes  []Class
	Cells    []int // per cell, an index into Classes
	Columns  int   // cells per row (default 64)
	CellSize int   // pixels per cell side (default 8)
}

// Layout constants, in pixels.
const (
	margin     = 10
	lineHeight = 18
	legendBox  = 12
)

// validate fills defaults and checks m.
func (m *Map) validate() error {
	if m.Columns <= 0 {
		m.Columns = 64
	}
	if m.CellSize <= 0 {
		m.CellSize = 8
	}
	if len(m.Classes) == 0 {
		return fmt.Errorf("%w: no classes", ErrInvalid)
	}
	for i, c := range m.Classes {
		if !validColor(c.Color) {
			return fmt.Errorf("%w: class %d (%q): color %q is not #rrggbb", ErrInvalid, i, c.Label, c.Color)
		}
	}
	for i, c := range m.Cells {
		if c < 0 || c >= len(m.Classes) {
			return fmt.Errorf("%w: cell %d has class %d of %d", ErrInvalid, i, c, len(m.Classes))
		}
	}
	return nil
}

func validColor(s string) bool {
	if len(s) != 7 || s[0] != '#' {
		return false
	}
	return strings.Trim(strings.ToLower(s[1:]), "0123456789abcdef") == ""
}

// Counts returns how many cells each class has.
func (m Map) Counts() []int {
	n := make([]int, len(m.Classes))
	for _, c := range m.Cells {
		if c >= 0 && c < len(n) {
			n[c]++
		}
	}
	return n
}

// WriteSVG draws m as a standalone SVG document.
func (m Map) WriteSVG(w io.Writer) error {
	if err := m.validate(); err != nil {
		return err
	}
	rows := (len(m.Cells) + m.Columns - 1) / m.Columns
	gridW, gridH := m.Columns*m.CellSize, rows*m.CellSize
	top := margin
	for _, s := range []string{m.Title, m.Subtitle} {
		if s != "" {
			top += lineHeight
		}
	}
	if top > margin {
		top += 4
	}
	legendY := top + gridH + margin
	width := max(gridW+2*margin, 360)
	height := legendY + len(m.Classes)*lineHeight + margin

	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="13">`+"\n",
		width, height, width, height)
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	y := margin
	for i, s := range []string{m.Title, m.Subtitle} {
		if s == "" {
			continue
		}
		y += lineHeight
		weight := ""
		if i == 0 {
			weight = ` font-weight="bold"`
		}
		fmt.Fprintf(b, `<text x="%d" y="%d"%s>%s</text>`+"\n", margin, y-4, weight, escape(s))
	}
	// One group per class, each a run of equal cells within a row.
	for k, c := range m.Classes {
		fmt.Fprintf(b, `<g fill="%s">`+"\n", c.Color)
		for r := 0; r < rows; r++ {
			lo, hi := r*m.Columns, min((r+1)*m.Columns, len(m.Cells))
			for i := lo; i < hi; {
				j := i
				for j < hi && m.Cells[j] == m.Cells[i] {
					j++
				}
				if m.Cells[i] == k {
					fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d"/>`+"\n",
						margin+(i-lo)*m.CellSize, top+r*m.CellSize, (j-i)*m.CellSize, m.CellSize)
				}
				i = j
			}
		}
		fmt.Fprintf(b, "</g>\n")
	}
	// Thin grid lines between cells, when cells are big enough to see them.
	if m.CellSize >= 6 && rows > 0 {
		fmt.Fprintf(b, `<g stroke="#ffffff" stroke-width="1">`+"\n")
		for c := 1; c < m.Columns; c++ {
			x := margin + c*m.CellSize
			fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d"/>`+"\n", x, top, x, top+gridH)
		}
		for r := 1; r < rows; r++ {
			yy := top + r*m.CellSize
			fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d"/>`+"\n", margin, yy, margin+gridW, yy)
		}
		fmt.Fprintf(b, "</g>\n")
	}
	counts := m.Counts()
	for k, c := range m.Classes {
		yy := legendY + k*lineHeight
		pct := 0.0
		if len(m.Cells) > 0 {
			pct = 100 * float64(counts[k]) / float64(len(m.Cells))
		}
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s" stroke="#555555"/>`+"\n",
			margin, yy, legendBox, legendBox, c.Color)
		fmt.Fprintf(b, `<text x="%d" y="%d">%s: %d (%.1f%%)</text>`+"\n",
			margin+legendBox+6, yy+legendBox-1, escape(c.Label), counts[k], pct)
	}
	fmt.Fprintf(b, "</svg>\n")
	return b.Flush()
}

func escape(s string) string {
	var sb strings.Builder
	xml.EscapeText(&sb, []byte(s))
	return sb.String()
}
