package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
)

// WriteList writes es as the `lode images` table to w: name, size, chunks,
// source digest, root, manifest and creation time. The size, chunk count and
// source come from each entry's public manifest header; "?" stands for an
// entry whose manifest cannot be read.
func WriteList(ctx context.Context, st store.Store, es []Entry, w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tCHUNKS\tSOURCE\tROOT\tMANIFEST\tCREATED")
	for _, e := range es {
		size, chunks, source := "?", "?", "?"
		if b, err := st.Get(ctx, store.ManifestKey(e.Pointer.Root, e.Pointer.Manifest), nil); err == nil {
			if m, err := manifest.ReadPublic(b); err == nil {
				size, chunks, source = humanize.IBytes(uint64(m.ImageSize)), fmt.Sprint(len(m.Names)), shortDigest(m.SourceDigest)
			}
		}
		name := e.Name
		if e.Pointer.Deleted {
			name += " (deleted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, size, chunks, source, e.Pointer.Root, e.Pointer.Manifest[:12], e.Pointer.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

// Inspection is the `lode inspect --json` form of an image.
type Inspection struct {
	Tenant         string    `json:"tenant"`
	Image          string    `json:"image"`
	Source         string    `json:"source_digest"`
	SourceRef      string    `json:"source_ref,omitempty"`
	SourceIndex    string    `json:"source_index_digest,omitempty"`
	DiffIDs        []string  `json:"diff_ids,omitempty"`
	ChainIDs       []string  `json:"chain_ids,omitempty"`
	Root           string    `json:"root"`
	Manifest       string    `json:"manifest"`
	Created        time.Time `json:"created"`
	FSType         string    `json:"fs_type"`
	ImageSize      int64     `json:"image_size"`
	ChunkSize      int       `json:"chunk_size"`
	Chunks         int       `json:"chunks"`
	Holes          int       `json:"holes"`
	Distinct       int       `json:"distinct"`
	Shared         int       `json:"shared"`
	Unique         int       `json:"unique"`
	OtherManifests int       `json:"other_manifests"`
	Entrypoint     []string  `json:"entrypoint"`
	Cmd            []string  `json:"cmd"`
	WorkingDir     string    `json:"workdir"`
	User           string    `json:"user"`
	Env            []string  `json:"env"`
	// StartSet is the build's start set (manifest hints) in chunks;
	// LearnedProfile the learned startup profile (internal/profile).
	StartSet       int             `json:"start_set_chunks"`
	LearnedProfile profile.Summary `json:"learned_profile"`
}

// WriteInspection writes what `lode inspect` shows of tenant's image name
// (manifest m under pointer p, sharing sh) to w: a labelled table, or with
// asJSON an indented Inspection.
func WriteInspection(w io.Writer, tenant, name string, m *manifest.Manifest, p store.Pointer, sh Sharing, lp profile.Summary, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(Inspection{
			Tenant: tenant, Image: name, Source: m.SourceDigest, Root: string(p.Root), Manifest: p.Manifest,
			SourceRef: m.SourceRef, SourceIndex: m.SourceIndexDigest, DiffIDs: m.DiffIDs, ChainIDs: m.ChainIDs(),
			Created: p.Created, FSType: m.FSType, ImageSize: m.ImageSize, ChunkSize: m.ChunkSize,
			Chunks: sh.Chunks, Holes: sh.Holes, Distinct: sh.Distinct, Shared: sh.Shared, Unique: sh.Unique,
			OtherManifests: sh.OtherImages, Entrypoint: m.Config.Entrypoint, Cmd: m.Config.Cmd,
			WorkingDir: m.Config.WorkingDir, User: m.Config.User, Env: m.Config.Env,
			StartSet: len(m.Hints), LearnedProfile: lp,
		})
	}
	pct := func(a, b int) float64 {
		if b == 0 {
			return 0
		}
		return 100 * float64(a) / float64(b)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "image:\t%s/%s\n", tenant, name)
	fmt.Fprintf(tw, "source:\t%s\n", orNone(m.SourceRef))
	fmt.Fprintf(tw, "source digest:\t%s\n", m.SourceDigest)
	fmt.Fprintf(tw, "source index:\t%s\n", orNone(m.SourceIndexDigest))
	chains := m.ChainIDs()
	for i, d := range m.DiffIDs {
		fmt.Fprintf(tw, "layer %d:\tdiff ID %s, chain ID %s\n", i, d, chains[i])
	}
	fmt.Fprintf(tw, "root:\t%s\n", p.Root)
	fmt.Fprintf(tw, "manifest:\t%s\n", p.Manifest)
	fmt.Fprintf(tw, "created:\t%s\n", p.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "filesystem:\t%s, %s (%d bytes)\n", m.FSType, humanize.IBytes(uint64(m.ImageSize)), m.ImageSize)
	fmt.Fprintf(tw, "chunk size:\t%s\n", humanize.IBytes(uint64(m.ChunkSize)))
	fmt.Fprintf(tw, "chunks:\t%d\n", sh.Chunks)
	fmt.Fprintf(tw, "holes:\t%d (%.1f%%)\n", sh.Holes, pct(sh.Holes, sh.Chunks))
	fmt.Fprintf(tw, "distinct stored chunks:\t%d\n", sh.Distinct)
	fmt.Fprintf(tw, "shared with other images:\t%d (%.1f%%, compared with %d other manifests in the root)\n", sh.Shared, pct(sh.Shared, sh.Distinct), sh.OtherImages)
	fmt.Fprintf(tw, "unique to this image:\t%d (%.1f%%)\n", sh.Unique, pct(sh.Unique, sh.Distinct))
	fmt.Fprintf(tw, "entrypoint:\t%s\n", quoteArgs(m.Config.Entrypoint))
	fmt.Fprintf(tw, "cmd:\t%s\n", quoteArgs(m.Config.Cmd))
	fmt.Fprintf(tw, "workdir:\t%s\n", m.Config.WorkingDir)
	fmt.Fprintf(tw, "user:\t%s\n", m.Config.User)
	fmt.Fprintf(tw, "env:\t%s\n", strings.Join(m.Config.Env, " "))
	fmt.Fprintf(tw, "start set (build):\t%d chunks\n", len(m.Hints))
	fmt.Fprintf(tw, "learned profile:\t%s\n", lp.Text(time.Now()))
	return tw.Flush()
}

func quoteArgs(a []string) string {
	if len(a) == 0 {
		return "(none)"
	}
	q := make([]string, len(a))
	for i, s := range a {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// shortDigest abbreviates "sha256:<64 hex>" to "sha256:<12 hex>", and ""
// to "-".
func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	if d == "" {
		return "-"
	}
	return d
}
