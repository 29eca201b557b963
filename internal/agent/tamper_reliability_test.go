package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachefleet/fleettest"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// distinctChunks returns, per distinct stored chunk of im, the indexes that
// name it, in first-use order.
func distinctChunks(im *builtImage) ([]chunk.Name, map[chunk.Name][]int) {
	var order []chunk.Name
	idx := map[chunk.Name][]int{}
	for i, n := range im.m.Names {
		if n.IsZero() {
			continue
		}
		if _, ok := idx[n]; !ok {
			order = append(order, n)
		}
		idx[n] = append(idx[n], i)
	}
	return order, idx
}

// TestTamperMatrix damages every stored chunk object of an image in every
// way the issue lists, one at a time, and reads through a fresh agent
// (memory and disk cache empty): the damaged chunk's reads fail with ErrIO
// and 0 bytes, and a chunk that is not damaged still reads correctly.
// It then does the same for every byte of the sealed manifest and for
// fleet shards. Every case counts; the totals are logged for
// docs/reliability.md.
func TestTamperMatrix(t *testing.T) {
	ctx := context.Background()
	w := newRelWorld(t)
	a := w.build(t, "a", "app", 1, 6)
	b := w.build(t, "b", "other", 2, 3)
	names, idx := distinctChunks(a)
	bNames, _ := distinctChunks(b)
	if len(names) < 4 || len(bNames) < 1 {
		t.Fatalf("image a has %d distinct chunks, b %d: too few for the matrix", len(names), len(bNames))
	}
	root := a.ptr.Root
	get := func(n chunk.Name) []byte {
		ct, err := w.st.Get(ctx, store.ChunkKey(root, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	rng := rand.New(rand.NewPCG(7, 7))
	mutations := []struct {
		name string
		// mutate returns the object's new bytes; nil deletes it.
		mutate func(n chunk.Name, ct []byte) []byte
	}{
		{"flip one bit", func(_ chunk.Name, ct []byte) []byte {
			c := bytes.Clone(ct)
			c[rng.IntN(len(c))] ^= 1 << rng.IntN(8)
			return c
		}},
		{"truncate by one byte", func(_ chunk.Name, ct []byte) []byte { return bytes.Clone(ct[:len(ct)-1]) }},
		{"truncate to zero", func(chunk.Name, []byte) []byte { return []byte{} }},
		{"another chunk of the image", func(n chunk.Name, _ []byte) []byte {
			for {
				o := names[rng.IntN(len(names))]
				if o != n {
					return get(o)
				}
			}
		}},
		{"a chunk of another tenant's image", func(chunk.Name, []byte) []byte {
			ct, err := w.st.Get(ctx, store.ChunkKey(b.ptr.Root, bNames[rng.IntN(len(bNames))]), nil)
			if err != nil {
				t.Fatal(err)
			}
			return ct
		}},
		{"delete", func(chunk.Name, []byte) []byte { return nil }},
	}

	// read reads chunk i of a through a fresh agent: origin behind an empty
	// disk cache and an empty memory cache.
	read := func(i int) ([]byte, int, error) {
		disk, err := agent.NewDiskCache(t.TempDir(), 64<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		im, err := agent.NewImage("a/app", a.m, agent.Config{
			Mem: agent.NewMemCache(16 << 20), Tiers: []agent.Tier{disk, agent.NewOrigin(w.st, root)},
			FetchTimeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		off, size := a.chunkRange(i)
		p := make([]byte, size)
		n, err := im.ReadAt(ctx, p, off)
		return p, n, err
	}

	chunkCases := 0
	for ci, n := range names {
		orig := get(n)
		// A chunk that does not share n's object, to check it still reads.
		other := names[(ci+1)%len(names)]
		for _, mu := range mutations {
			bad := mu.mutate(n, orig)
			if bad == nil {
				if err := w.st.Delete(ctx, store.ChunkKey(root, n)); err != nil {
					t.Fatal(err)
				}
			} else if err := w.st.Put(ctx, store.ChunkKey(root, n), bad); err != nil {
				t.Fatal(err)
			}
			for _, i := range idx[n] {
				chunkCases++
				_, got, err := read(i)
				want := chunk.ErrCorrupt
				if bad == nil {
					want = store.ErrNotFound
				}
				if got != 0 || !errors.Is(err, agent.ErrIO) || !errors.Is(err, want) {
					t.Errorf("%s of chunk %d (%s): ReadAt = %d, %v; want 0 and an error wrapping ErrIO and %v", mu.name, i, n, got, err, want)
				}
			}
			oi := idx[other][0]
			p, got, err := read(oi)
			off, size := a.chunkRange(oi)
			if err != nil || int64(got) != size || !bytes.Equal(p, a.plain[off:off+size]) {
				t.Errorf("%s of chunk %s: reading undamaged chunk %d = %d, %v (bytes equal: %t)", mu.name, n, oi, got, err, bytes.Equal(p, a.plain[off:off+size]))
			}
			if err := w.st.Put(ctx, store.ChunkKey(root, n), orig); err != nil {
				t.Fatal(err)
			}
		}
	}
	// With every object restored, the whole image reads back exactly.
	whole := make([]byte, a.m.ImageSize)
	im, err := agent.NewImage("a/app", a.m, agent.Config{Tiers: []agent.Tier{agent.NewOrigin(w.st, root)}})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := im.ReadAt(ctx, whole, 0); err != nil || !bytes.Equal(whole, a.plain) {
		t.Fatalf("after restoring: ReadAt(whole image) = %d, %v; bytes equal %t", n, err, bytes.Equal(whole, a.plain))
	}
	im.Close()

	manifestCases := tamperManifest(t, w, a, b)
	shardCases := tamperShards(t, w, a, names)
	t.Logf("tamper matrix: %d distinct chunks of %d (+%d holes) × %d mutations = %d chunk read cases; %d manifest cases; %d fleet shard cases; %d in all; wrong bytes returned: 0",
		len(names), len(a.m.Names), a.m.Holes(), len(mutations), chunkCases, manifestCases, shardCases, chunkCases+manifestCases+shardCases)
}

// tamperManifest flips one bit in every byte of a's sealed manifest and
// truncates it at every length, checking both catalog.Resolve (the pointer
// names the manifest by its hash) and manifest.Open alone (an attacker who
// also rewrote the pointer); then redirects a's pointer to b's manifest and
// to a missing one. It returns the number of cases.
func tamperManifest(t *testing.T, w *relWorld, a, b *builtImage) int {
	ctx := context.Background()
	key := store.ManifestKey(a.ptr.Root, a.ptr.Manifest)
	sealed, err := w.st.Get(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := 0
	check := func(what string, bad []byte) {
		cases += 2
		if err := w.st.Put(ctx, key, bad); err != nil {
			t.Fatal(err)
		}
		if m, _, err := catalog.Resolve(ctx, w.st, w.kr, a.tenant, a.name); m != nil || !errors.Is(err, manifest.ErrCorrupt) {
			t.Errorf("%s: Resolve = %v, %v; want nil and ErrCorrupt", what, m != nil, err)
		}
		m, err := manifest.Open(ctx, bad, a.tenant, w.kr)
		if m != nil || !(errors.Is(err, manifest.ErrCorrupt) || errors.Is(err, manifest.ErrVersion) || errors.Is(err, manifest.ErrWrongKey)) {
			t.Errorf("%s: manifest.Open = %v, %v; want nil and ErrCorrupt, ErrVersion or ErrWrongKey", what, m != nil, err)
		}
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 1 << (i % 8)
		check(fmt.Sprintf("bit %d of byte %d flipped", i%8, i), bad)
	}
	for n := range len(sealed) {
		check(fmt.Sprintf("truncated to %d bytes", n), bytes.Clone(sealed[:n]))
	}
	check("one byte appended", append(bytes.Clone(sealed), 0))
	if err := w.st.Put(ctx, key, sealed); err != nil {
		t.Fatal(err)
	}

	// Pointer redirected to the other tenant's manifest (copied into a's
	// root, as a store writer could): a's key cannot open it.
	bSealed, err := w.st.Get(ctx, store.ManifestKey(b.ptr.Root, b.ptr.Manifest), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.st.Put(ctx, store.ManifestKey(a.ptr.Root, b.ptr.Manifest), bSealed); err != nil {
		t.Fatal(err)
	}
	ptrKey := store.ImageKey(a.tenant, a.name)
	origPtr, err := w.st.Get(ctx, ptrKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	redirect := func(id string) error {
		p := a.ptr
		p.Manifest = id
		if err := w.st.Put(ctx, ptrKey, store.MarshalPointer(p)); err != nil {
			t.Fatal(err)
		}
		_, _, err := catalog.Resolve(ctx, w.st, w.kr, a.tenant, a.name)
		return err
	}
	cases++
	if err := redirect(b.ptr.Manifest); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("pointer of a redirected to b's manifest: Resolve = %v, want ErrWrongKey", err)
	}
	cases++
	if err := redirect(chunk.Name{1}.String()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("pointer of a redirected to a missing manifest: Resolve = %v, want ErrNotFound", err)
	}
	cases++
	if err := w.st.Put(ctx, ptrKey, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if m, _, err := catalog.Resolve(ctx, w.st, w.kr, a.tenant, a.name); m != nil || err == nil {
		t.Errorf("garbled pointer: Resolve = %v, %v; want an error", m != nil, err)
	}
	if err := w.st.Put(ctx, ptrKey, origPtr); err != nil {
		t.Fatal(err)
	}
	if _, _, err := catalog.Resolve(ctx, w.st, w.kr, a.tenant, a.name); err != nil {
		t.Fatalf("after restoring: Resolve = %v", err)
	}
	return cases
}

// tamperShards fills a's first chunks into a five-node fleet (4 of 5) and,
// for each, corrupts one shard (each index in turn) and then every pair of
// shards, in two ways (one payload bit flipped; payload replaced by random
// bytes under a valid header). One bad shard: the fleet still serves the
// exact chunk. Two: the fleet misses (store.ErrNotFound), and an agent over
// [fleet, origin] still returns the right bytes. It returns the number of
// cases.
func tamperShards(t *testing.T, w *relWorld, a *builtImage, names []chunk.Name) int {
	ctx := context.Background()
	fl := fleettest.Start(t, 5, fleettest.Options{MemBytes: 16 << 20})
	cl, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: fl.URLs(), M: 4, K: 5, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	root := a.ptr.Root
	rng := rand.New(rand.NewPCG(3, 3))
	kinds := []struct {
		name string
		bad  func(payload []byte)
	}{
		{"payload bit flipped", func(p []byte) { p[rng.IntN(len(p))] ^= 1 << rng.IntN(8) }},
		{"payload replaced", func(p []byte) {
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
		}},
	}
	cases := 0
	for _, n := range names[:min(len(names), 4)] {
		ct, err := w.st.Get(ctx, store.ChunkKey(root, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.Fill(ctx, n, ct); err != nil {
			t.Fatal(err)
		}
		shards := fleetShards(t, fl.URLs(), n)
		if len(shards) != 5 {
			t.Fatalf("chunk %s: %d shards in the fleet after Fill, want 5", n, len(shards))
		}
		put := func(s fleetShard, b []byte) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, s.url+fleetproto.ShardPath(n, s.index), bytes.NewReader(b))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				t.Fatalf("PUT shard %d of %s to %s: %s", s.index, n, s.url, resp.Status)
			}
		}
		var sets [][]int
		for i := range 5 {
			sets = append(sets, []int{i})
		}
		for i := range 5 {
			for j := i + 1; j < 5; j++ {
				sets = append(sets, []int{i, j})
			}
		}
		for _, k := range kinds {
			for _, set := range sets {
				cases++
				for _, si := range set {
					bad := bytes.Clone(shards[si].bytes)
					k.bad(bad[fleetproto.HeaderSize:])
					put(shards[si], bad)
				}
				got, err := cl.Fetch(ctx, n, nil)
				switch {
				case len(set) == 1 && (err != nil || !bytes.Equal(got, ct)):
					t.Errorf("%s in shard %v of %s: Fetch = %d bytes, %v; want the chunk", k.name, set, n, len(got), err)
				case len(set) == 2 && err == nil && !bytes.Equal(got, ct):
					t.Errorf("%s in shards %v of %s: Fetch returned wrong bytes", k.name, set, n)
				case len(set) == 2 && err != nil && !errors.Is(err, store.ErrNotFound):
					t.Errorf("%s in shards %v of %s: Fetch = %v, want a miss (ErrNotFound)", k.name, set, n, err)
				}
				if len(set) == 2 {
					// Through an agent, the miss falls through to the origin.
					i := a.indexOf(n)
					im, err := agent.NewImage("a/app", a.m, agent.Config{Tiers: []agent.Tier{noFill{cl}, agent.NewOrigin(w.st, root)}})
					if err != nil {
						t.Fatal(err)
					}
					off, size := a.chunkRange(i)
					p := make([]byte, size)
					if m, err := im.ReadAt(ctx, p, off); err != nil || !bytes.Equal(p[:m], a.plain[off:off+size]) {
						t.Errorf("%s in shards %v of %s: agent ReadAt = %d, %v, bytes equal %t", k.name, set, n, m, err, bytes.Equal(p[:m], a.plain[off:off+size]))
					}
					im.Close()
				}
				for _, si := range set {
					put(shards[si], shards[si].bytes)
				}
			}
		}
	}
	return cases
}

// noFill is a tier whose write-backs are dropped, so an agent read does not
// repair the shards a case damaged.
type noFill struct{ agent.Tier }

func (noFill) Fill(context.Context, chunk.Name, []byte) error { return nil }

func (im *builtImage) indexOf(n chunk.Name) int {
	for i, x := range im.m.Names {
		if x == n {
			return i
		}
	}
	return -1
}

type fleetShard struct {
	url   string
	index int
	bytes []byte
}

// fleetShards reads every shard of n held by the nodes at urls, indexed by
// shard index.
func fleetShards(t *testing.T, urls []string, n chunk.Name) map[int]fleetShard {
	t.Helper()
	out := map[int]fleetShard{}
	for _, u := range urls {
		resp, err := http.Get(u + fleetproto.ShardPath(n, -1))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusNotFound {
			continue
		}
		parts, err := fleetproto.SplitShards(body)
		if err != nil {
			t.Fatalf("shards of %s on %s: %v", n, u, err)
		}
		for _, p := range parts {
			h, _, err := fleetproto.ParseShard(p)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Index] = fleetShard{url: u, index: h.Index, bytes: bytes.Clone(p)}
		}
	}
	return out
}
