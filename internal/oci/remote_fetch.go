package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Layer download for docker:// sources.
//
// The flattener reads layers in order, base first, once each (a registry
// layer is always spooled uncompressed by pass 1, see scan). Downloads run
// ahead of it: opening layer i starts layers i … i+Jobs-1, each streaming into
// an unlinked temporary file that the flattener reads as it grows, so it
// consumes layer i at network speed while the next layers download
// concurrently. A layer's file is closed as soon as the flattener has read
// it, so the disk holds at most Jobs compressed layers, never the whole image.
// ggcr verifies each blob against its digest as it is read; a mismatch fails
// the layer with ErrCorrupt naming it. A connection dropped mid-layer is
// resumed by fetching the blob again and skipping what was already written
// (at most maxAttempts fetches per layer).

const maxAttempts = 3

type remoteLayer struct {
	l     *layer
	size  int64
	fetch func(ctx context.Context) (io.ReadCloser, error)
}

type prefetcher struct {
	ctx      context.Context
	cancel   context.CancelFunc
	jobs     int
	dir      string
	host     string
	progress PullProgress
	classify func(what string, err error) error // remoteError for this source

	layers []remoteLayer
	pulled atomic.Int64

	mu  sync.Mutex
	dls []*download // started, not yet handed to the flattener
}

type download struct {
	f      *os.File
	cancel context.CancelFunc
	mu     sync.Mutex
	cond   *sync.Cond
	n      int64 // bytes written to f
	done   bool
	err    error
}

// opener returns layer i's open function.
func (p *prefetcher) opener(i int) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		p.mu.Lock()
		if p.dls == nil {
			p.dls = make([]*download, len(p.layers))
		}
		for j := i; j < len(p.layers) && j < i+p.jobs; j++ {
			if p.dls[j] == nil {
				d, err := p.start(j)
				if err != nil {
					p.mu.Unlock()
					return nil, err
				}
				p.dls[j] = d
			}
		}
		d := p.dls[i]
		p.dls[i] = nil // the reader owns it now; opening i again downloads again
		p.mu.Unlock()
		return &spoolReader{ctx: ctx, d: d}, nil
	}
}

func (p *prefetcher) start(i int) (*download, error) {
	rl := p.layers[i]
	f, err := os.CreateTemp(p.dir, "lode-pull-*")
	if err != nil {
		return nil, rl.l.errorf(ErrCorrupt, err, "spooling download")
	}
	os.Remove(f.Name()) // unlinked: nothing to clean up after a crash
	ctx, cancel := context.WithCancel(p.ctx)
	d := &download{f: f, cancel: cancel}
	d.cond = sync.NewCond(&d.mu)
	if p.progress != nil {
		p.progress.LayerStart(i, len(p.layers), rl.l.digest, rl.size)
	}
	go func() {
		err := p.run(ctx, i, d)
		if p.progress != nil {
			p.progress.LayerDone(i, err)
		}
		d.mu.Lock()
		d.done, d.err = true, err
		d.cond.Broadcast()
		d.mu.Unlock()
	}()
	return d, nil
}

// run downloads layer i into d.f.
func (p *prefetcher) run(ctx context.Context, i int, d *download) error {
	rl := p.layers[i]
	buf := make([]byte, 1<<20)
	var lastErr error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		rc, err := rl.fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, ErrStalled) {
				return rl.l.errorf(ErrStalled, err, "downloading layer")
			}
			e := p.classify(fmt.Sprintf("downloading layer %d (%s)", i, rl.l.digest), err)
			return rl.l.errorf(registrySentinel(e), e, "downloading layer")
		}
		d.mu.Lock()
		have := d.n
		d.mu.Unlock()
		// A resumed fetch re-reads what is already written (ggcr verifies the
		// digest over the whole stream) and skips it.
		skipped, err := io.CopyN(io.Discard, rc, have)
		p.pulled.Add(skipped)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // shorter than what the first fetch already gave
		}
		for err == nil {
			var n int
			n, err = rc.Read(buf)
			if n > 0 {
				p.pulled.Add(int64(n))
				if _, werr := d.f.WriteAt(buf[:n], have); werr != nil {
					rc.Close()
					return rl.l.errorf(ErrCorrupt, werr, "spooling download")
				}
				have += int64(n)
				d.mu.Lock()
				d.n = have
				d.cond.Broadcast()
				d.mu.Unlock()
				if p.progress != nil {
					p.progress.LayerAdd(i, int64(n))
				}
			}
		}
		rc.Close()
		if err == io.EOF {
			return nil
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrStalled):
			return rl.l.errorf(ErrStalled, err, "downloading layer")
		case !retryableRead(err):
			// ggcr's verifying reader fails the last read when the bytes do not
			// hash to the layer digest (or their count differs from the size).
			return rl.l.errorf(ErrCorrupt, err, "downloading layer from %s: its bytes do not match the layer digest", p.host)
		}
		lastErr = err
	}
	return rl.l.errorf(ErrCorrupt, lastErr, "downloading layer from %s: connection dropped %d times", p.host, maxAttempts)
}

// registrySentinel picks the sentinel for a layer whose fetch the registry
// refused.
func registrySentinel(err error) error {
	for _, s := range []error{ErrNotFound, ErrUnauthorized, ErrPlainHTTP, ErrStalled} {
		if errors.Is(err, s) {
			return s
		}
	}
	return ErrCorrupt
}

func (p *prefetcher) Close() {
	p.cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, d := range p.dls {
		if d != nil {
			d.close()
			p.dls[i] = nil
		}
	}
}

func (d *download) close() {
	d.cancel()
	d.f.Close()
}

// spoolReader reads a download as it is written.
type spoolReader struct {
	ctx  context.Context
	d    *download
	off  int64
	stop func() bool
}

func (r *spoolReader) Read(b []byte) (int, error) {
	d := r.d
	d.mu.Lock()
	if r.stop == nil {
		// Wake the wait below when the reader's context ends.
		r.stop = context.AfterFunc(r.ctx, func() {
			d.mu.Lock()
			d.cond.Broadcast()
			d.mu.Unlock()
		})
	}
	for r.off >= d.n && !d.done && r.ctx.Err() == nil {
		d.cond.Wait()
	}
	n, done, err := d.n, d.done, d.err
	d.mu.Unlock()
	if r.off < n {
		m, rerr := d.f.ReadAt(b[:min(int64(len(b)), n-r.off)], r.off)
		r.off += int64(m)
		if rerr != nil && rerr != io.EOF {
			return m, rerr
		}
		return m, nil
	}
	if cerr := r.ctx.Err(); cerr != nil {
		return 0, cerr
	}
	if done && err != nil {
		return 0, err
	}
	return 0, io.EOF
}

func (r *spoolReader) Close() error {
	if r.stop != nil {
		r.stop()
	}
	r.d.close()
	return nil
}
