package build

import (
	"fmt"
	"io"

	"github.com/dustin/go-humanize"
)

// WriteReport writes what `lode build` prints of r to w: an unchanged
// image's source, or the build's sizes, chunk counts, sharing and
// throughput (and a remote source's manifest and layers), then the root,
// manifest and store (st, as its String shows it).
func WriteReport(w io.Writer, r Result, st fmt.Stringer) {
	if r.Unchanged {
		fmt.Fprintf(w, "unchanged %s/%s: already built from %s (%s); --force rebuilds\n", r.Tenant, r.Name, r.Source.Ref, r.SourceDigest)
		fmt.Fprintf(w, "root %s, manifest %s, store %s\n", r.Root, r.ManifestID, st)
		return
	}
	secs := r.Duration.Seconds()
	fmt.Fprintf(w, "built %s/%s: %s in, %s image, %d chunks (%d holes, %d new, %d deduplicated, %.1f%% shared), %s uploaded, %.2fs, %.0f MB/s\n",
		r.Tenant, r.Name, humanize.IBytes(uint64(r.InputBytes)), humanize.IBytes(uint64(r.ImageSize)),
		r.Chunks, r.Holes, r.New, r.Dedup, 100*r.SharedShare(), humanize.IBytes(uint64(r.NewBytes)),
		secs, float64(r.ImageSize)/1e6/secs)
	if r.Source.Remote {
		idx := ""
		if r.Source.IndexDigest != "" {
			idx = ", index " + r.Source.IndexDigest
		}
		fmt.Fprintf(w, "source %s: manifest %s%s, %d layers, %s pulled\n", r.Source.Ref, r.SourceDigest, idx, len(r.Source.DiffIDs), humanize.IBytes(uint64(r.Pulled)))
	}
	fmt.Fprintf(w, "root %s, manifest %s, store %s\n", r.Root, r.ManifestID, st)
}
