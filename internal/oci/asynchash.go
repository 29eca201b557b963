package oci

import "hash"

// asyncHash is a hash.Hash that hashes on its own goroutine: Write copies
// the bytes into one of a few buffers and returns, so a layer's digest is
// computed on another core while its tar is parsed (issue #22: the rootfs
// tar's SHA-256, taken on each of Flatten's two passes, was on the build's
// critical path). The bytes are hashed in the order written; Sum waits for
// them. After Sum, writes hash synchronously. One goroutine uses it (the
// layer's reader), like any hash.Hash; stop ends the goroutine when Sum is
// never called.
type asyncHash struct {
	hash.Hash
	full    chan []byte
	free    chan []byte
	done    chan struct{}
	stopped bool
}

const (
	asyncHashBufs   = 3
	asyncHashBufLen = 1 << 20
)

func newAsyncHash(h hash.Hash) *asyncHash {
	a := &asyncHash{Hash: h, full: make(chan []byte, asyncHashBufs), free: make(chan []byte, asyncHashBufs), done: make(chan struct{})}
	for range asyncHashBufs {
		a.free <- make([]byte, 0, asyncHashBufLen)
	}
	go func() {
		defer close(a.done)
		for b := range a.full {
			h.Write(b)
			a.free <- b[:0]
		}
	}()
	return a
}

func (a *asyncHash) Write(p []byte) (int, error) {
	if a.stopped {
		return a.Hash.Write(p)
	}
	n := len(p)
	for len(p) > 0 {
		b := <-a.free
		k := min(len(p), cap(b))
		b = append(b, p[:k]...)
		p = p[k:]
		a.full <- b
	}
	return n, nil
}

// stop waits until every written byte is hashed and ends the goroutine.
func (a *asyncHash) stop() {
	if !a.stopped {
		a.stopped = true
		close(a.full)
		<-a.done
	}
}

func (a *asyncHash) Sum(b []byte) []byte {
	a.stop()
	return a.Hash.Sum(b)
}

func (a *asyncHash) Reset() {
	a.stop()
	a.Hash.Reset()
}
