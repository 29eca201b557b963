package ext4img

import (
	"io"
	"sync"
)

// bufPipe is io.Pipe with a few buffers between its ends, hand-written
// because the standard library's pipe is unbuffered by design: a Write
// returns only once the reader has taken all of it, so the flattener and
// tar2ext4 (which reads a header, then writes the entry's blocks, then reads
// again) took turns instead of running at once on two cores (issue #22).
// Here the writer fills one buffer while the reader drains another. One
// goroutine writes and one reads, as with io.Pipe.
type bufPipe struct {
	full chan []byte // filled buffers, in order; closed by the writer's close
	free chan []byte
	done chan struct{} // closed by the reader's close
	once sync.Once
	rerr error // the reader's close reason; set before done is closed
	werr error // the writer's close reason; set before full is closed

	cur  []byte // writer: the buffer being filled
	rcur []byte // reader: the buffer being drained
	rbuf []byte // reader: what is left of it
}

const (
	pipeBufs   = 4
	pipeBufLen = 1 << 20
)

func newBufPipe() *bufPipe {
	p := &bufPipe{full: make(chan []byte, pipeBufs), free: make(chan []byte, pipeBufs), done: make(chan struct{})}
	for range pipeBufs {
		p.free <- make([]byte, 0, pipeBufLen)
	}
	return p
}

// Write copies b into the pipe's buffers; it blocks while every buffer is
// full, and fails with the reader's reason once the reader closed.
func (p *bufPipe) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		if p.cur == nil {
			select {
			case buf := <-p.free:
				p.cur = buf[:0]
			case <-p.done:
				return n, p.rerr
			}
		}
		k := copy(p.cur[len(p.cur):cap(p.cur)], b)
		p.cur = p.cur[:len(p.cur)+k]
		b, n = b[k:], n+k
		if len(p.cur) == cap(p.cur) {
			if err := p.send(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (p *bufPipe) send() error {
	select {
	case p.full <- p.cur:
		p.cur = nil
		return nil
	case <-p.done:
		return p.rerr
	}
}

// CloseWrite ends the stream after what was written: the reader then gets
// err, or io.EOF when err is nil.
func (p *bufPipe) CloseWrite(err error) {
	if len(p.cur) > 0 {
		if p.send() != nil {
			p.cur = nil
		}
	}
	p.werr = err
	close(p.full)
}

// Read reads what the writer wrote, then its close reason (io.EOF).
func (p *bufPipe) Read(b []byte) (int, error) {
	for len(p.rbuf) == 0 {
		if p.rcur != nil {
			p.free <- p.rcur[:0] // never blocks: there are pipeBufs buffers
			p.rcur = nil
		}
		buf, ok := <-p.full
		if !ok {
			if p.werr != nil {
				return 0, p.werr
			}
			return 0, io.EOF
		}
		p.rcur, p.rbuf = buf, buf
	}
	n := copy(b, p.rbuf)
	p.rbuf = p.rbuf[n:]
	return n, nil
}

// CloseWithError closes the reading end: the writer's writes fail with err
// (io.ErrClosedPipe when nil).
func (p *bufPipe) CloseWithError(err error) error {
	p.once.Do(func() {
		if err == nil {
			err = io.ErrClosedPipe
		}
		p.rerr = err
		close(p.done)
	})
	return nil
}

// Close closes the reading end (CloseWithError(nil)).
func (p *bufPipe) Close() error { return p.CloseWithError(nil) }
