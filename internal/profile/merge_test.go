package profile

import (
	"slices"
	"testing"
	"time"
)

func TestCombine(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	s := func(order ...uint32) *Profile { return FromStart(order, 100, t0) }
	for _, tc := range []struct {
		name       string
		starts     []*Profile
		wantChunks []uint32
		wantCounts []uint32
		wantStarts int
	}{
		{"one start keeps its order", []*Profile{s(9, 3, 7)}, []uint32{9, 3, 7}, []uint32{1, 1, 1}, 1},
		{"duplicates and out of range dropped", []*Profile{s(9, 3, 9, 100, 7)}, []uint32{9, 3, 7}, []uint32{1, 1, 1}, 1},
		{"chunks read by every start first", []*Profile{s(1, 2, 3), s(4, 2, 3)}, []uint32{2, 3, 1, 4}, []uint32{2, 2, 1, 1}, 2},
		{"then by mean first-read position", []*Profile{s(5, 6, 7, 8), s(8, 5, 6, 7)}, []uint32{5, 6, 8, 7}, []uint32{2, 2, 2, 2}, 2},
		{"ties by index", []*Profile{s(4), s(3)}, []uint32{3, 4}, []uint32{1, 1}, 2},
		{"other image sizes skipped", []*Profile{s(1), FromStart([]uint32{2}, 50, t0)}, []uint32{1}, []uint32{1}, 1},
		{"merged profiles weigh as their starts", []*Profile{Combine([]*Profile{s(1), s(1)}), s(2)}, []uint32{1, 2}, []uint32{2, 1}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Combine(tc.starts)
			if !slices.Equal(got.Chunks, tc.wantChunks) || !slices.Equal(got.Counts, tc.wantCounts) || got.Starts != tc.wantStarts {
				t.Errorf("Combine = %v %v (%d starts), want %v %v (%d)", got.Chunks, got.Counts, got.Starts, tc.wantChunks, tc.wantCounts, tc.wantStarts)
			}
			if err := got.Validate(100); err != nil {
				t.Errorf("Combine result invalid: %v", err)
			}
		})
	}
	if Combine(nil) != nil {
		t.Error("Combine(nil) != nil")
	}
}

func TestCombineBounded(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	big := make([]uint32, MaxEntries+10)
	for i := range big {
		big[i] = uint32(i)
	}
	a := FromStart(big, len(big)+100, t0)
	if len(a.Chunks) != MaxEntries {
		t.Fatalf("FromStart kept %d chunks, want %d", len(a.Chunks), MaxEntries)
	}
	// The chunks of a second start beyond the bound win over ones only a read.
	b := FromStart([]uint32{uint32(len(big) + 50), 0}, len(big)+100, t0.Add(time.Second))
	got := Combine([]*Profile{a, b})
	if len(got.Chunks) != MaxEntries || got.Chunks[0] != 0 || !slices.Contains(got.Chunks, uint32(len(big)+50)) {
		t.Errorf("Combine bounded: %d chunks, first %d, has %d: %v", len(got.Chunks), got.Chunks[0], len(big)+50, slices.Contains(got.Chunks, uint32(len(big)+50)))
	}
	if !got.Created.Equal(t0) || !got.Updated.Equal(t0.Add(time.Second)) {
		t.Errorf("Combine times %v..%v", got.Created, got.Updated)
	}
}

func TestMerge(t *testing.T) {
	for _, tc := range []struct {
		name           string
		learned, hints []uint32
		want           []uint32
	}{
		{"nothing", nil, nil, []uint32{}},
		{"learned only", []uint32{4, 2}, nil, []uint32{4, 2}},
		{"hints only", nil, []uint32{1, 2}, []uint32{1, 2}},
		{"learned first, then hints not in it", []uint32{4, 2}, []uint32{1, 2, 3, 4}, []uint32{4, 2, 1, 3}},
		{"duplicates dropped", []uint32{4, 4}, []uint32{1, 1}, []uint32{4, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Merge(tc.learned, tc.hints); !slices.Equal(got, tc.want) {
				t.Errorf("Merge(%v, %v) = %v, want %v", tc.learned, tc.hints, got, tc.want)
			}
		})
	}
}
