package worker

import (
	"context"
	"slices"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/ext4img"
)

// PrefetchStartFiles prefetches, in the background, the ELF closure of
// programs a start runs that the build's start set may not hold: `lode run
// --entrypoint` replaces the entrypoint the build found its start set
// from, and without a learned profile each page fault of the new program
// (python3: 13 chunks of its own) then waits for its chunk, one round trip
// after another (docs/coldstart.md, "Requests before the output"). It
// finds the files' ranges in the image the way the build does
// (ext4img.StartSet, reading the image through its cache: the metadata it
// needs is the start set's first part) and fetches the chunks the build's
// start set does not list. An image with a learned profile is left to it.
func (w *Image) PrefetchStartFiles(ctx context.Context, files []string, parallel int) {
	if len(files) == 0 || files[0] == "" {
		return
	}
	go w.prefetchStartFiles(ctx, files, prefetchFor(w.Image, w.localOrigin, parallel))
}

func (w *Image) prefetchStartFiles(ctx context.Context, files []string, parallel int) {
	if len(w.learn.Learned(ctx)) > 0 {
		return
	}
	rs, _, err := ext4img.StartSet(imageReader{ctx, w.Image}, ext4img.StartSetOptions{Files: files, Env: w.Manifest.Config.Env})
	if err != nil {
		w.log.Debug("no start set for the run's entrypoint", "image", w.Name, "files", files, "err", err)
		return
	}
	var add []uint32
	for _, c := range ext4img.Chunks(rs, int64(w.Manifest.ChunkSize), w.Image.Size()) {
		if !slices.Contains(w.Manifest.Hints, c) {
			add = append(add, c)
		}
	}
	n, err := w.Image.Prefetch(ctx, add, parallel)
	w.log.Debug("prefetched the run's entrypoint", "image", w.Name, "files", files, "chunks", len(add), "fetches", n, "err", err)
}

// imageReader reads an agent.Image as an io.ReaderAt under ctx.
type imageReader struct {
	ctx context.Context
	im  *agent.Image
}

func (r imageReader) ReadAt(p []byte, off int64) (int, error) { return r.im.ReadAt(r.ctx, p, off) }
