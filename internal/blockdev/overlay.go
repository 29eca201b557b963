package blockdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
)

// WritableDevice is a Device that also takes writes, as an NBD export with a
// copy-on-write overlay does. Writes are visible to later reads at once;
// they are durable only after Flush returns. WriteAt and ZeroAt never extend
// the device: an access past Size fails with ErrOutOfRange. All methods are
// safe for concurrent use.
type WritableDevice interface {
	Device
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	// ZeroAt makes [off, off+n) read as zeros.
	ZeroAt(ctx context.Context, off, n int64) error
	Flush(ctx context.Context) error
}

// OverlayBlockSize is the copy-on-write granularity: a write to part of a
// block first copies the whole block from the base.
const OverlayBlockSize = 4096

// overlayMagic starts the persisted bitmap file (version 1).
var overlayMagic = [8]byte{'L', 'O', 'D', 'E', 'C', 'O', 'W', '1'}

// overlayHeaderSize is magic + block size (u32) + pad (u32) + base size (u64).
const overlayHeaderSize = 24

// Overlay is a copy-on-write WritableDevice over a read-only base. Written
// blocks live in a sparse local file at path (the same size as the base,
// block i at offset i*OverlayBlockSize); which blocks are there is an
// in-memory bitmap persisted to path+".map" on Flush and Close. The base is
// never written. Reopening the same path over the same base resumes the
// overlay as of its last Flush; writes after the last Flush may be lost in
// a crash (NBD semantics: a client flushes what it needs kept).
type Overlay struct {
	base Device
	path string

	mu     sync.RWMutex // guards bitmap, dirty, closed; writers hold it exclusively
	data   *os.File
	bitmap []byte // bit i set: block i is in data
	dirty  bool
	closed bool
}

var _ WritableDevice = (*Overlay)(nil)

// NewOverlay opens (or creates) the overlay at path over base. If
// path+".map" exists it must describe base (ErrOverlayMismatch otherwise).
func NewOverlay(base Device, path string) (*Overlay, error) {
	size := base.Size()
	nblocks := (size + OverlayBlockSize - 1) / OverlayBlockSize
	o := &Overlay{base: base, path: path, bitmap: make([]byte, (nblocks+7)/8)}
	raw, err := os.ReadFile(o.mapPath())
	switch {
	case err == nil:
		if err := o.loadBitmap(raw, size); err != nil {
			return nil, fmt.Errorf("opening overlay %s: %w", path, err)
		}
	case os.IsNotExist(err):
		// Fresh overlay: any stale data file content is meaningless.
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("opening overlay %s: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("opening overlay %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening overlay %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("sizing overlay %s: %w", path, err)
	}
	o.data = f
	return o, nil
}

func (o *Overlay) mapPath() string { return o.path + ".map" }

func (o *Overlay) loadBitmap(raw []byte, size int64) error {
	if len(raw) != overlayHeaderSize+len(o.bitmap) || !bytes.Equal(raw[:8], overlayMagic[:]) {
		return fmt.Errorf("bitmap %s: %w", o.mapPath(), ErrOverlayMismatch)
	}
	if bs := binary.LittleEndian.Uint32(raw[8:]); bs != OverlayBlockSize {
		return fmt.Errorf("bitmap %s has block size %d: %w", o.mapPath(), bs, ErrOverlayMismatch)
	}
	if s := binary.LittleEndian.Uint64(raw[16:]); s != uint64(size) {
		return fmt.Errorf("bitmap %s is for size %d, base is %d: %w", o.mapPath(), s, size, ErrOverlayMismatch)
	}
	copy(o.bitmap, raw[overlayHeaderSize:])
	return nil
}

// Size implements Device: the base's size.
func (o *Overlay) Size() int64 { return o.base.Size() }

func (o *Overlay) has(block int64) bool { return o.bitmap[block/8]&(1<<(block%8)) != 0 }
func (o *Overlay) set(block int64)      { o.bitmap[block/8] |= 1 << (block % 8) }

// ReadAt implements Device, merging written blocks over the base.
func (o *Overlay) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	size := o.Size()
	if off < 0 {
		return 0, ErrOutOfRange
	}
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > size-off {
		p, eof = p[:size-off], io.EOF
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.closed {
		return 0, ErrClosed
	}
	// Walk runs of blocks that come from the same side.
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		b := pos / OverlayBlockSize
		fromOverlay := o.has(b)
		end := (b + 1) * OverlayBlockSize
		for end < off+int64(len(p)) && o.has(end/OverlayBlockSize) == fromOverlay {
			end += OverlayBlockSize
		}
		n := int(min(end, off+int64(len(p))) - pos)
		chunk := p[done : done+n]
		var err error
		if fromOverlay {
			_, err = o.data.ReadAt(chunk, pos)
			if err != nil {
				err = fmt.Errorf("reading overlay %s at %d: %w", o.path, pos, err)
			}
		} else {
			_, err = o.base.ReadAt(ctx, chunk, pos)
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, eof
}

// WriteAt implements WritableDevice.
func (o *Overlay) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.Size() {
		return 0, ErrOutOfRange
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, ErrClosed
	}
	if err := o.fillPartial(ctx, off, int64(len(p))); err != nil {
		return 0, err
	}
	if _, err := o.data.WriteAt(p, off); err != nil {
		return 0, fmt.Errorf("writing overlay %s at %d: %w", o.path, off, err)
	}
	o.markRange(off, int64(len(p)))
	return len(p), nil
}

// ZeroAt implements WritableDevice.
func (o *Overlay) ZeroAt(ctx context.Context, off, n int64) error {
	if off < 0 || n < 0 || off+n > o.Size() {
		return ErrOutOfRange
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	if err := o.fillPartial(ctx, off, n); err != nil {
		return err
	}
	zero := make([]byte, min(n, 1<<20))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(zero)))
		if _, err := o.data.WriteAt(zero[:k], off+done); err != nil {
			return fmt.Errorf("zeroing overlay %s at %d: %w", o.path, off+done, err)
		}
		done += k
	}
	o.markRange(off, n)
	return nil
}

// fillPartial copies from the base the first and last blocks of
// [off, off+n) that the access covers only partly and that the overlay does
// not hold yet, so that marking them afterwards keeps their other bytes.
// The caller holds o.mu exclusively.
func (o *Overlay) fillPartial(ctx context.Context, off, n int64) error {
	if n == 0 {
		return nil
	}
	first, last := off/OverlayBlockSize, (off+n-1)/OverlayBlockSize
	for _, b := range []int64{first, last} {
		start := b * OverlayBlockSize
		end := min(start+OverlayBlockSize, o.Size())
		if o.has(b) || (off <= start && off+n >= end) {
			continue
		}
		buf := make([]byte, end-start)
		if _, err := o.base.ReadAt(ctx, buf, start); err != nil && err != io.EOF {
			return fmt.Errorf("copying block %d of base into overlay %s: %w", b, o.path, err)
		}
		if _, err := o.data.WriteAt(buf, start); err != nil {
			return fmt.Errorf("copying block %d into overlay %s: %w", b, o.path, err)
		}
		o.set(b)
		if first == last {
			break
		}
	}
	return nil
}

func (o *Overlay) markRange(off, n int64) {
	if n == 0 {
		return
	}
	for b := off / OverlayBlockSize; b <= (off+n-1)/OverlayBlockSize; b++ {
		o.set(b)
	}
	o.dirty = true
}

// Flush makes every completed write durable: it syncs the data file, then
// atomically replaces the persisted bitmap.
func (o *Overlay) Flush(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	return o.flushLocked()
}

func (o *Overlay) flushLocked() error {
	if !o.dirty {
		return nil
	}
	if err := o.data.Sync(); err != nil {
		return fmt.Errorf("syncing overlay %s: %w", o.path, err)
	}
	raw := make([]byte, overlayHeaderSize+len(o.bitmap))
	copy(raw, overlayMagic[:])
	binary.LittleEndian.PutUint32(raw[8:], OverlayBlockSize)
	binary.LittleEndian.PutUint64(raw[16:], uint64(o.Size()))
	copy(raw[overlayHeaderSize:], o.bitmap)
	tmp := o.mapPath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing overlay bitmap %s: %w", tmp, err)
	}
	_, err = f.Write(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, o.mapPath())
	}
	if err != nil {
		return fmt.Errorf("writing overlay bitmap %s: %w", o.mapPath(), err)
	}
	o.dirty = false
	return nil
}

// Close flushes and closes the overlay. It is idempotent.
func (o *Overlay) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	err := o.flushLocked()
	o.closed = true
	if cerr := o.data.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing overlay %s: %w", o.path, cerr)
	}
	return err
}
