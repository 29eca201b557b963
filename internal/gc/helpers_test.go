package gc

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// errCrash is what a crashed process's store operations return.
var errCrash = errors.New("injected crash")

// faultStore fails its failAt-th operation and every one after it, like a
// process that died between two store operations. failAt 0 never fails.
type faultStore struct {
	store.Store
	mu     sync.Mutex
	ops    int
	failAt int
}

func (f *faultStore) arm(failAt int) {
	f.mu.Lock()
	f.ops, f.failAt = 0, failAt
	f.mu.Unlock()
}

func (f *faultStore) tick(verb, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops++
	if f.failAt > 0 && f.ops >= f.failAt {
		return fmt.Errorf("%s %s (operation %d): %w", verb, key, f.ops, errCrash)
	}
	return nil
}

func (f *faultStore) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	if err := f.tick("get", key); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, key, dst)
}

func (f *faultStore) GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error) {
	if err := f.tick("get range", key); err != nil {
		return nil, err
	}
	return f.Store.GetRange(ctx, key, off, n, dst)
}

func (f *faultStore) Put(ctx context.Context, key string, data []byte) error {
	if err := f.tick("put", key); err != nil {
		return err
	}
	return f.Store.Put(ctx, key, data)
}

func (f *faultStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := f.tick("put if absent", key); err != nil {
		return err
	}
	return f.Store.PutIfAbsent(ctx, key, data)
}

func (f *faultStore) Stat(ctx context.Context, key string) (int64, error) {
	if err := f.tick("stat", key); err != nil {
		return 0, err
	}
	return f.Store.Stat(ctx, key)
}

func (f *faultStore) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	if err := f.tick("list", prefix); err != nil {
		return err
	}
	return f.Store.List(ctx, prefix, fn)
}

func (f *faultStore) ListDirs(ctx context.Context, prefix string, fn func(string) error) error {
	if err := f.tick("list dirs", prefix); err != nil {
		return err
	}
	return f.Store.ListDirs(ctx, prefix, fn)
}

func (f *faultStore) Delete(ctx context.Context, key string) error {
	if err := f.tick("delete", key); err != nil {
		return err
	}
	return f.Store.Delete(ctx, key)
}

const testChunkSize = chunk.MinSize

// world is a store with images built the way internal/build builds them,
// a fake clock, and the expected content of every live image.
type world struct {
	t      testing.TB
	raw    store.Store
	kr     *manifest.FileKeyring
	sealer *chunk.Sealer
	now    time.Time
	// live maps tenant/name to the image's expected blocks (nil: a hole).
	live map[string][][]byte
	// plain maps every chunk name ever sealed to its plaintext.
	plain map[chunk.Name][]byte
	// chunkSize is the chunk size of builds (default testChunkSize).
	chunkSize int
	// forget, when set, keeps neither live nor plain (for benchmarks).
	forget bool
}

var testTenants = []string{"acme", "zeta"}

func newWorld(t testing.TB, st store.Store) *world {
	t.Helper()
	kr, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range testTenants {
		if err := kr.AddTenant(tn); err != nil {
			t.Fatal(err)
		}
	}
	s, err := chunk.NewSealer(kr.StoreSecret())
	if err != nil {
		t.Fatal(err)
	}
	return &world{
		t: t, raw: st, kr: kr, sealer: s,
		now:       time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		live:      map[string][][]byte{},
		plain:     map[chunk.Name][]byte{},
		chunkSize: testChunkSize,
	}
}

func (w *world) clock() time.Time { return w.now }

func salt(root store.RootID) []byte {
	h := sha256.Sum256([]byte("lode-gc-test/" + root))
	return h[:]
}

// modelBuild is a model of an image build split into the phases internal/build goes
// through, so a test can interleave other work between them.
type modelBuild struct {
	tenant, name string
	blocks       [][]byte
	started      time.Time
	phase        int // 0: nothing done; 1: root resolved; 2: chunks stored
	root         store.RootID
	m            *manifest.Manifest
	sealed       []byte
}

func (w *world) newBuild(tenant, name string, blocks [][]byte) *modelBuild {
	return &modelBuild{tenant: tenant, name: name, blocks: blocks, started: w.now}
}

// step runs the build's next phase against st. It reports whether the
// build is done.
func (w *world) step(ctx context.Context, st store.Store, b *modelBuild) (bool, error) {
	switch b.phase {
	case 0:
		root, err := store.ActiveRoot(ctx, st, true, w.now)
		if err != nil {
			return false, err
		}
		b.root, b.phase = root, 1
		return false, nil
	case 1:
		m := &manifest.Manifest{
			Root: string(b.root), ChunkSize: w.chunkSize, FSType: manifest.FSTypeExt4,
			ImageSize: int64(len(b.blocks) * w.chunkSize),
			Names:     make([]chunk.Name, len(b.blocks)), Keys: make([]chunk.Key, len(b.blocks)),
		}
		for i, p := range b.blocks {
			if p == nil {
				continue
			}
			ref, ct, err := w.sealer.Seal(p, salt(b.root), nil)
			if err != nil {
				return false, err
			}
			if !w.forget {
				w.plain[ref.Name] = p
			}
			m.Names[i], m.Keys[i] = ref.Name, ref.Key
			key := store.ChunkKey(b.root, ref.Name)
			if _, err := st.Stat(ctx, key); err == nil {
				continue
			} else if !errors.Is(err, store.ErrNotFound) {
				return false, err
			}
			if err := st.PutIfAbsent(ctx, key, ct); err != nil && !errors.Is(err, store.ErrExists) {
				return false, err
			}
		}
		sealed, err := manifest.Seal(ctx, m, b.tenant, w.kr)
		if err != nil {
			return false, err
		}
		b.m, b.sealed, b.phase = m, sealed, 2
		return false, nil
	default:
		id := manifest.ID(b.sealed)
		if err := st.PutIfAbsent(ctx, store.ManifestKey(b.root, id), b.sealed); err != nil && !errors.Is(err, store.ErrExists) {
			return false, err
		}
		p := store.Pointer{Root: b.root, Manifest: id, Created: w.now.UTC()}
		if err := st.Put(ctx, store.ImageKey(b.tenant, b.name), store.MarshalPointer(p)); err != nil {
			return false, err
		}
		if !w.forget {
			w.live[b.tenant+"/"+b.name] = b.blocks
		}
		return true, nil
	}
}

// buildNow runs a whole build without faults.
func (w *world) buildNow(tenant, name string, blocks [][]byte) {
	w.t.Helper()
	b := w.newBuild(tenant, name, blocks)
	for {
		done, err := w.step(context.Background(), w.raw, b)
		if err != nil {
			w.t.Fatalf("building %s/%s: %v", tenant, name, err)
		}
		if done {
			return
		}
	}
}

// reconcile settles the model after a build or deletion crashed: the
// pointer write is the single commit point, so the pointer says which
// outcome happened.
func (w *world) reconcile(ctx context.Context, tenant, name string, b *modelBuild) {
	w.t.Helper()
	p, err := catalog.Lookup(ctx, w.raw, tenant, name)
	if errors.Is(err, catalog.ErrNoImage) {
		delete(w.live, tenant+"/"+name)
		return
	}
	if err != nil {
		w.t.Fatalf("reconciling %s/%s: %v", tenant, name, err)
	}
	switch {
	case p.Deleted:
		delete(w.live, tenant+"/"+name)
	case b != nil && b.sealed != nil && p.Manifest == manifest.ID(b.sealed):
		w.live[tenant+"/"+name] = b.blocks
	}
}

// check reads every live image back through its pointer and compares it
// byte for byte, and checks that every pointer names a readable root.
func (w *world) check(ctx context.Context) error {
	for key, blocks := range w.live {
		tenant, name, _ := strings.Cut(key, "/")
		m, p, err := catalog.Resolve(ctx, w.raw, w.kr, tenant, name)
		if err != nil {
			return fmt.Errorf("resolving live image %s: %w", key, err)
		}
		ri, err := store.ReadRoot(ctx, w.raw, p.Root)
		if err != nil {
			return fmt.Errorf("image %s: %w", key, err)
		}
		if ri.State != store.RootActive && ri.State != store.RootRetired {
			return fmt.Errorf("live image %s points into root %s, which is %s", key, p.Root, ri.State)
		}
		if len(m.Names) != len(blocks) {
			return fmt.Errorf("image %s has %d chunks, want %d", key, len(m.Names), len(blocks))
		}
		for i, want := range blocks {
			if m.Names[i].IsZero() {
				if want != nil {
					return fmt.Errorf("image %s chunk %d is a hole, want data", key, i)
				}
				continue
			}
			ct, err := w.raw.Get(ctx, store.ChunkKey(p.Root, m.Names[i]), nil)
			if err != nil {
				return fmt.Errorf("reading image %s chunk %d: %w", key, i, err)
			}
			got, err := chunk.Open(m.Ref(i), ct, nil)
			if err != nil {
				return fmt.Errorf("opening image %s chunk %d: %w", key, i, err)
			}
			if string(got) != string(want) {
				return fmt.Errorf("image %s chunk %d differs from what was built", key, i)
			}
		}
	}
	return nil
}

// chunksInStore lists every chunk object of every root.
func chunksInStore(ctx context.Context, st store.Store) (map[store.RootID][]chunk.Name, error) {
	out := map[store.RootID][]chunk.Name{}
	roots, err := store.Roots(ctx, st)
	if err != nil {
		return nil, err
	}
	for _, ri := range roots {
		prefix := store.ChunksPrefix(ri.ID)
		err := st.List(ctx, prefix, func(key string, _ int64) error {
			n, err := chunk.ParseName(key[len(prefix):])
			if err != nil {
				return err
			}
			out[ri.ID] = append(out[ri.ID], n)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// block returns a deterministic plaintext block for id.
func block(id int) []byte {
	b := make([]byte, testChunkSize)
	h := sha256.Sum256([]byte(fmt.Sprint("block", id)))
	for i := range b {
		b[i] = h[i%len(h)] ^ byte(i/len(h))
	}
	return b
}

func deleteImage(ctx context.Context, st store.Store, tenant, name string) error {
	return catalog.Delete(ctx, st, tenant, name)
}
