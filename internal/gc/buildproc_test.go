package gc

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// The randomized test runs real builds (internal/build.Build, with its own
// salt, root resolution and commit check) as processes it can pause between
// any two store operations: each build runs in a goroutine whose store
// operations wait for the test's permission (gateStore). The goroutine only
// runs while the test waits for it, so everything stays deterministic.

// Build phases, from the keys of a build's store operations; a step of a
// build runs it until it asks for an operation of a later phase.
const (
	phaseStart   = iota
	phaseResolve // roots/: listing and reading root states, creating the first root
	phaseChunks  // roots/<root>/chunks/: Stat and PutIfAbsent of each chunk
	phaseCommit  // the manifest, the commit check (STATE), the pointer: one step, as in a real process
)

func phaseOf(key string) int {
	switch {
	case strings.Contains(key, "/chunks/"):
		return phaseChunks
	case strings.Contains(key, "/manifests/"), strings.HasPrefix(key, "images/"):
		return phaseCommit
	}
	return phaseResolve
}

type gateReq struct {
	key string
	ok  chan error
}

// gateStore makes every store operation of one build wait for permission.
type gateStore struct {
	store.Store
	ctx  context.Context
	reqs chan gateReq
}

func (g *gateStore) ask(key string) error {
	r := gateReq{key: key, ok: make(chan error, 1)}
	select {
	case g.reqs <- r:
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
	select {
	case err := <-r.ok:
		return err
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
}

func (g *gateStore) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	if err := g.ask(key); err != nil {
		return nil, err
	}
	return g.Store.Get(ctx, key, dst)
}

func (g *gateStore) GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error) {
	if err := g.ask(key); err != nil {
		return nil, err
	}
	return g.Store.GetRange(ctx, key, off, n, dst)
}

func (g *gateStore) Put(ctx context.Context, key string, data []byte) error {
	if err := g.ask(key); err != nil {
		return err
	}
	return g.Store.Put(ctx, key, data)
}

func (g *gateStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := g.ask(key); err != nil {
		return err
	}
	return g.Store.PutIfAbsent(ctx, key, data)
}

func (g *gateStore) Stat(ctx context.Context, key string) (int64, error) {
	if err := g.ask(key); err != nil {
		return 0, err
	}
	return g.Store.Stat(ctx, key)
}

func (g *gateStore) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	if err := g.ask(prefix); err != nil {
		return err
	}
	return g.Store.List(ctx, prefix, fn)
}

func (g *gateStore) ListDirs(ctx context.Context, prefix string, fn func(string) error) error {
	if err := g.ask(prefix); err != nil {
		return err
	}
	return g.Store.ListDirs(ctx, prefix, fn)
}

func (g *gateStore) Delete(ctx context.Context, key string) error {
	if err := g.ask(key); err != nil {
		return err
	}
	return g.Store.Delete(ctx, key)
}

// buildProc is one run of build.Build, paused between store operations.
type buildProc struct {
	tenant, name string
	files        []int // content ids of its files (see procTar)
	src, keep    string
	opts         build.Options
	gate         *gateStore
	cancel       context.CancelFunc
	started      bool
	phase        int
	held         *gateReq
	done         chan error
	finished     bool
	res          build.Result
	err          error
}

const procChunkSize = 64 << 10

// newBuildProc prepares a build of a rootfs tar holding one file per entry
// of files, each procChunkSize bytes of content block(id) (so images that
// share an id share a chunk: the layout is chunk-aligned), against st.
func (w *world) newBuildProc(st store.Store, dir, tenant, name string, files []int, timeout time.Duration) *buildProc {
	w.t.Helper()
	src := filepath.Join(dir, "src.tar")
	if err := os.WriteFile(src, procTar(files), 0o600); err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &buildProc{tenant: tenant, name: name, files: files, src: src, keep: filepath.Join(dir, "image.ext4"),
		gate: &gateStore{Store: st, ctx: ctx, reqs: make(chan gateReq)}, cancel: cancel, done: make(chan error, 1)}
	p.opts = build.Options{
		Source: "rootfs:" + src, Tenant: tenant, Name: name, ChunkSize: procChunkSize,
		Uploads: 1, TempDir: dir, KeepImage: p.keep, Timeout: timeout, Now: w.clock,
	}
	p.opts.Ext4.InlineData = true
	p.opts.Ext4.Align = procChunkSize
	return p
}

// advance runs the build until it asks for an operation of a later phase
// (held for the next advance) or ends. It reports whether it ended.
func (p *buildProc) advance(w *world) bool {
	if p.finished {
		return true
	}
	if !p.started {
		p.started = true
		go func() {
			res, err := build.Build(context.Background(), p.gate, w.kr, w.kr.StoreSecret(), p.opts)
			p.res = res
			p.done <- err
		}()
	}
	if p.held != nil {
		p.held.ok <- nil
		p.held = nil
	}
	for {
		select {
		case r := <-p.gate.reqs:
			if ph := phaseOf(r.key); ph > p.phase {
				p.phase = ph
				if ph != phaseResolve {
					p.held = &r
					return false
				}
			}
			r.ok <- nil
		case err := <-p.done:
			p.finished, p.err = true, err
			return true
		}
	}
}

// abandon stops a build that will never run again (a process killed while
// paused: it writes nothing more).
func (p *buildProc) abandon() {
	p.cancel()
	if p.started && !p.finished {
		<-p.done
		p.finished = true
	}
}

// chunksOf returns the plaintext chunks (nil: hole) of the image the build
// kept, what a reader of the image must get back.
func (p *buildProc) chunksOf() ([][]byte, error) {
	img, err := os.ReadFile(p.keep)
	if err != nil {
		return nil, err
	}
	n := chunk.Count(int64(len(img)), procChunkSize)
	out := make([][]byte, n)
	for i := range out {
		c := img[i*procChunkSize : min((i+1)*procChunkSize, len(img))]
		if !bytes.Equal(c, make([]byte, len(c))) {
			out[i] = c
		}
	}
	return out, nil
}

// procTar is a rootfs tar of one procChunkSize file per id.
func procTar(ids []int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, id := range ids {
		body := bytes.Repeat(block(id), procChunkSize/testChunkSize)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%02d", i), Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1, 0)})
		tw.Write(body)
	}
	tw.Close()
	return buf.Bytes()
}

// expectedBuildError reports whether err is how a build may end in the
// randomized test: a crash, or a refusal at the commit check.
func expectedBuildError(err error) bool {
	return errors.Is(err, errCrash) || errors.Is(err, build.ErrDeadline) || errors.Is(err, build.ErrRootNotActive)
}
