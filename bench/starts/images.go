package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

const benchRoot = store.RootID("bench")

// images is the synthetic catalogue: Bases × PerBase images of Chunks
// chunks each; the first baseChunks of every image are its base layer's
// (shared by the images on that base), the rest its own. Each image has a
// fixed start set, the chunks a start reads (ReadFrac of the image, BaseShare
// of them in the base, base chunks drawn with Zipf popularity so images on
// one base share the hot ones). Only chunks in some start set are sealed
// and stored; the others get names no tier holds (read-ahead is off, so
// nothing reads them). Each manifest's Hints is its start set, in read order,
// as `lode build` records it.
type images struct {
	manifests []*manifest.Manifest
	sets      [][]int // start set of each image: chunk indexes
	names     []chunk.Name
	stored    int // distinct chunks stored
	bytes     int64
}

type layerChunk struct{ layer, idx int }

func buildImages(ctx context.Context, c config, st store.Store) (*images, error) {
	r := rand.New(rand.NewPCG(c.Seed, 0x1a6e))
	nImages := c.Bases * c.PerBase
	baseChunks := int(math.Round(c.BaseFrac * float64(c.Chunks)))
	ownChunks := c.Chunks - baseChunks
	nRead := max(1, int(math.Round(c.ReadFrac*float64(c.Chunks))))
	nBase := min(baseChunks, int(math.Round(c.ReadBase*float64(nRead))))
	nOwn := min(ownChunks, nRead-nBase)
	baseZ := rand.NewZipf(r, c.ZipfS, 1, uint64(baseChunks-1))

	layerOf := func(img, i int) layerChunk {
		if i < baseChunks {
			return layerChunk{img % c.Bases, i}
		}
		return layerChunk{c.Bases + img, i - baseChunks}
	}
	ims := &images{}
	want := map[layerChunk]bool{}
	for img := range nImages {
		seen := map[int]bool{}
		var set []int
		for len(set) < nBase {
			if i := int(baseZ.Uint64()); !seen[i] {
				seen[i] = true
				set = append(set, i)
			}
		}
		for len(set) < nBase+nOwn {
			if i := baseChunks + r.IntN(ownChunks); !seen[i] {
				seen[i] = true
				set = append(set, i)
			}
		}
		for _, i := range set {
			want[layerOf(img, i)] = true
		}
		ims.sets = append(ims.sets, set)
	}

	// Seal and store every wanted chunk.
	ids := make([]layerChunk, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sealer, err := chunk.NewSealer(bytes.Repeat([]byte{7}, chunk.SecretSize))
	if err != nil {
		return nil, err
	}
	refs := make([]chunk.Ref, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	var bufs sync.Pool
	for i, id := range ids {
		g.Go(func() error {
			bp, _ := bufs.Get().(*[2][]byte)
			if bp == nil {
				bp = &[2][]byte{make([]byte, c.ChunkSize), make([]byte, 0, c.ChunkSize+chunk.Overhead)}
			}
			defer bufs.Put(bp)
			ref, ct, err := sealer.Seal(plaintext(c.Seed, id, bp[0]), []byte(benchRoot), bp[1])
			if err != nil {
				return err
			}
			refs[i] = ref
			if err := st.Put(gctx, store.ChunkKey(benchRoot, ref.Name), ct); err != nil {
				return fmt.Errorf("storing chunk %s: %w", ref.Name, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	refOf := make(map[layerChunk]chunk.Ref, len(ids))
	for i, id := range ids {
		refOf[id] = refs[i]
		ims.names = append(ims.names, refs[i].Name)
	}
	ims.stored = len(ids)
	ims.bytes = int64(len(ids)) * int64(c.ChunkSize)
	for img := range nImages {
		m := &manifest.Manifest{Root: string(benchRoot), ChunkSize: c.ChunkSize, ImageSize: int64(c.Chunks) * int64(c.ChunkSize), FSType: "ext4"}
		for _, i := range ims.sets[img] { // the build's start set, in read order
			m.Hints = append(m.Hints, uint32(i))
		}
		for i := range c.Chunks {
			id := layerOf(img, i)
			ref, ok := refOf[id]
			if !ok {
				ref.Name = sha256.Sum256(fmt.Appendf(nil, "never read %d/%d", id.layer, id.idx))
			}
			m.Names = append(m.Names, ref.Name)
			m.Keys = append(m.Keys, ref.Key)
		}
		ims.manifests = append(ims.manifests, m)
	}
	return ims, nil
}

// plaintext fills dst with the deterministic contents of a layer's chunk.
func plaintext(seed uint64, id layerChunk, dst []byte) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[0:], seed)
	binary.LittleEndian.PutUint64(s[8:], uint64(id.layer))
	binary.LittleEndian.PutUint64(s[16:], uint64(id.idx))
	rand.NewChaCha8(s).Read(dst)
	return dst
}
