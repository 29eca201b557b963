package heatmap

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

func small() Map {
	return Map{
		Title:    "acme/app <v1> & co",
		Subtitle: "10 chunks of 512 KiB",
		Classes: []Class{
			{"hole", "#eeeeee"},
			{"shared with other images", "#4c9be8"},
			{"unique", "#e8743b"},
		},
		Cells:   []int{0, 1, 1, 1, 2, 0, 2, 2, 1, 0},
		Columns: 4,
	}
}

func TestGolden(t *testing.T) {
	var b bytes.Buffer
	if err := small().WriteSVG(&b); err != nil {
		t.Fatalf("WriteSVG() = %v", err)
	}
	golden := filepath.Join("testdata", "small.svg")
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create): %v", err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("WriteSVG() differs from %s (-want +got):\n%s", golden, diff)
	}
	// It is well-formed XML, and the title is escaped.
	dec := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	var texts []string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("parsing the SVG: %v", err)
		}
		if cd, ok := tok.(xml.CharData); ok && strings.TrimSpace(string(cd)) != "" {
			texts = append(texts, string(cd))
		}
	}
	wantTexts := []string{"acme/app <v1> & co", "10 chunks of 512 KiB", "hole: 3 (30.0%)", "shared with other images: 4 (40.0%)", "unique: 3 (30.0%)"}
	if diff := cmp.Diff(wantTexts, texts); diff != "" {
		t.Errorf("texts in the SVG (-want +got):\n%s", diff)
	}
}

func TestRunsMerge(t *testing.T) {
	m := Map{Classes: []Class{{"a", "#000000"}, {"b", "#ffffff"}}, Cells: make([]int, 1000), Columns: 100}
	m.Cells[150] = 1
	var b bytes.Buffer
	if err := m.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	// Class a: rows 0, 2..9 whole (9 runs) and row 1 split around cell 150
	// (2 runs); class b: one cell; the legend: 2 boxes and the background.
	if got := strings.Count(b.String(), "<rect "); got != 9+2+1+2+1 {
		t.Errorf("%d rects, want 15", got)
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Map)
	}{
		{"no classes", func(m *Map) { m.Classes = nil }},
		{"cell past the classes", func(m *Map) { m.Cells[2] = 3 }},
		{"negative cell", func(m *Map) { m.Cells[0] = -1 }},
		{"color not hex", func(m *Map) { m.Classes[0].Color = "red" }},
		{"color with a quote", func(m *Map) { m.Classes[1].Color = `#12"456` }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := small()
			tc.change(&m)
			var b bytes.Buffer
			if err := m.WriteSVG(&b); !errors.Is(err, ErrInvalid) {
				t.Errorf("WriteSVG() = %v, want ErrInvalid", err)
			}
			if b.Len() != 0 {
				t.Errorf("WriteSVG() wrote %d bytes before failing", b.Len())
			}
		})
	}
}

func TestEmpty(t *testing.T) {
	m := Map{Classes: []Class{{"a", "#000000"}}}
	var b bytes.Buffer
	if err := m.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "a: 0 (0.0%)") {
		t.Errorf("empty map legend missing: %s", b.String())
	}
}

func BenchmarkWriteSVG_20480(b *testing.B) {
	m := Map{Classes: []Class{{"hole", "#eeeeee"}, {"shared", "#4c9be8"}, {"unique", "#e8743b"}}, Cells: make([]int, 20480), Columns: 128}
	x := uint32(1)
	for i := range m.Cells {
		x = x*1664525 + 1013904223
		m.Cells[i] = int(x>>30) % 3
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := m.WriteSVG(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
