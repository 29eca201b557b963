package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// transmit serves requests until NBD_CMD_DISC, a read error or ctx ends.
// Requests run concurrently (at most MaxInflight); replies are serialized
// by c.wmu. It returns after every started request has replied.
func (c *conn) transmit(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, c.s.c.MaxInflight)
	var wg sync.WaitGroup
	defer wg.Wait()
	hdr := make([]byte, requestSize)
	size := uint64(c.export.Device.Size())
	for {
		if _, err := io.ReadFull(c.br, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // client hung up without DISC
			}
			return fmt.Errorf("reading request header: %w", err)
		}
		r, err := parseRequest(hdr)
		if err != nil {
			return err
		}
		var payload []byte
		switch r.typ {
		case cmdDisc:
			wg.Wait()
			return c.move(stateClosed)
		case cmdWrite:
			if r.length > c.s.c.MaxRequest {
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					return fmt.Errorf("discarding oversized write payload: %w", err)
				}
				if err := c.send(r.cookie, errInval, nil); err != nil {
					return err
				}
				continue
			}
			payload = getBuf(int(r.length))
			if _, err := io.ReadFull(c.br, payload); err != nil {
				putBuf(payload)
				return fmt.Errorf("reading write payload at %d: %w", r.offset, err)
			}
		}
		// Fast rejections need no goroutine.
		if errno := c.check(r, size); errno != 0 {
			putBuf(payload)
			if err := c.send(r.cookie, errno, nil); err != nil {
				return err
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			putBuf(payload)
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := c.handle(ctx, r, payload); err != nil {
				cancel()
				c.rw.Close() // unblocks the reader loop
			}
		}()
	}
}

// check validates a request against the export and returns an NBD errno,
// or 0 when the request may run.
func (c *conn) check(r request, size uint64) uint32 {
	end := r.offset + uint64(r.length)
	inRange := end >= r.offset && end <= size
	switch r.typ {
	case cmdRead:
		if r.length > c.s.c.MaxRequest {
			return errOverflow
		}
		if !inRange {
			return errInval
		}
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if c.wdev == nil {
			return errPerm
		}
		if !inRange {
			return errNoSpc
		}
	case cmdFlush:
	default: // CACHE and BLOCK_STATUS were not advertised; unknown commands
		return errInval
	}
	return 0
}

// handle runs one validated request and sends its reply. An error means
// the reply could not be written: the connection is dead.
func (c *conn) handle(ctx context.Context, r request, payload []byte) error {
	defer putBuf(payload)
	var errno uint32
	switch r.typ {
	case cmdRead:
		buf := getBuf(int(r.length))
		defer putBuf(buf)
		if _, err := c.export.Device.ReadAt(ctx, buf, int64(r.offset)); err != nil && !errors.Is(err, io.EOF) {
			c.s.c.Log.Warn("nbd read failed", "export", c.name, "offset", r.offset, "length", r.length, "err", err)
			return c.send(r.cookie, errIO, nil)
		}
		return c.send(r.cookie, 0, buf)
	case cmdWrite:
		if _, err := c.wdev.WriteAt(ctx, payload, int64(r.offset)); err != nil {
			c.s.c.Log.Warn("nbd write failed", "export", c.name, "offset", r.offset, "err", err)
			errno = errIO
		}
	case cmdTrim, cmdWriteZeroes:
		// TRIM may leave any content; zeroing is a correct choice.
		if err := c.wdev.ZeroAt(ctx, int64(r.offset), int64(r.length)); err != nil {
			c.s.c.Log.Warn("nbd zeroing failed", "export", c.name, "offset", r.offset, "err", err)
			errno = errIO
		}
	case cmdFlush:
		if c.wdev != nil {
			if err := c.wdev.Flush(ctx); err != nil {
				errno = errIO
			}
		}
	}
	if errno == 0 && r.flags&cmdFlagFUA != 0 && c.wdev != nil && r.typ != cmdFlush {
		if err := c.wdev.Flush(ctx); err != nil {
			errno = errIO
		}
	}
	return c.send(r.cookie, errno, nil)
}

// send writes one simple reply (with data only when errno is 0).
func (c *conn) send(cookie uint64, errno uint32, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var hdr [16]byte
	c.bw.Write(appendSimpleReply(hdr[:0], errno, cookie))
	if errno == 0 && len(data) > 0 {
		c.bw.Write(data)
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing reply: %w", err)
	}
	return nil
}

// Buffers for payloads, pooled by power-of-two class up to 32 MiB.
var bufPools [26]sync.Pool

func bufClass(n int) int {
	c := 0
	for 1<<c < n {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	if n == 0 {
		return nil
	}
	c := bufClass(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<c)
}

func putBuf(b []byte) {
	if cap(b) == 0 {
		return
	}
	c := bufClass(cap(b))
	if c >= len(bufPools) || 1<<c != cap(b) {
		return
	}
	b = b[:cap(b)]
	bufPools[c].Put(&b)
}
