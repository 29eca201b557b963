package profile

import (
	"cmp"
	"slices"
	"time"
)

// Combine merges start profiles of one image (each usually one start's,
// FromStart) into one: see the package doc, "Merging starts". Profiles whose
// ChunkCount differs from the first's are skipped. A profile of several
// starts counts as that many starts that read its chunks at its ranks.
// Combine of nothing is nil.
func Combine(starts []*Profile) *Profile {
	if len(starts) == 0 {
		return nil
	}
	type acc struct {
		count  uint32
		posSum float64
	}
	out := &Profile{ChunkCount: starts[0].ChunkCount}
	accs := make(map[uint32]*acc)
	for _, p := range starts {
		if p == nil || p.ChunkCount != out.ChunkCount {
			continue
		}
		out.Starts += p.Starts
		if out.Created.IsZero() || p.Created.Before(out.Created) {
			out.Created = p.Created
		}
		if p.Updated.After(out.Updated) {
			out.Updated = p.Updated
		}
		for i, c := range p.Chunks {
			a := accs[c]
			if a == nil {
				a = &acc{}
				accs[c] = a
			}
			n := p.Counts[i]
			a.count += n
			a.posSum += float64(i) * float64(n)
		}
	}
	if out.Starts == 0 {
		return nil
	}
	chunks := make([]uint32, 0, len(accs))
	for c := range accs {
		chunks = append(chunks, c)
	}
	pos := func(c uint32) float64 { a := accs[c]; return a.posSum / float64(a.count) }
	slices.SortFunc(chunks, func(x, y uint32) int {
		if c := cmp.Compare(accs[y].count, accs[x].count); c != 0 {
			return c
		}
		if c := cmp.Compare(pos(x), pos(y)); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	if len(chunks) > MaxEntries {
		chunks = chunks[:MaxEntries]
	}
	out.Chunks = chunks
	out.Counts = make([]uint32, len(chunks))
	for i, c := range chunks {
		out.Counts[i] = min(accs[c].count, uint32(out.Starts))
	}
	return out
}

// Merge is what a worker prefetches at open: the learned profile's chunks
// first, in its order, then the build's start set (manifest.Hints) not
// already in it, in its order. Either may be empty; duplicates are dropped.
func Merge(learned, hints []uint32) []uint32 {
	out := make([]uint32, 0, len(learned)+len(hints))
	seen := make(map[uint32]bool, len(learned)+len(hints))
	for _, l := range [][]uint32{learned, hints} {
		for _, c := range l {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// Age is how long ago p's last start was recorded, as of now.
func (p *Profile) Age(now time.Time) time.Duration { return now.Sub(p.Updated) }
