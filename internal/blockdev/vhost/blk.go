package vhost

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"sync"

	"github.com/lode-dev/lode/internal/blockdev"
)

// virtio-blk (virtio 1.1, 5.2).
const (
	blkTIn          = 0
	blkTOut         = 1
	blkTFlush       = 4
	blkTGetID       = 8
	blkTWriteZeroes = 13

	blkSOK     = 0
	blkSIOErr  = 1
	blkSUnsupp = 2

	blkIDBytes  = 20
	sectorSize  = 512
	outHdrSize  = 16
	zeroSegSize = 16

	featBlkSegMax      = 1 << 2
	featBlkRO          = 1 << 5
	featBlkBlkSize     = 1 << 6
	featBlkFlush       = 1 << 9
	featBlkTopology    = 1 << 10
	featBlkWriteZeroes = 1 << 14
	featProtocol       = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	featVersion1       = 1 << 32

	// segMax is the most data buffers a request may have: a 128-entry
	// queue (QEMU's default) less the header and status descriptors, so
	// a request always fits without indirect descriptors.
	segMax = 126
	// maxZeroSectors bounds one WRITE_ZEROES segment (1 GiB).
	maxZeroSectors = 1 << 21
)

// blk serves virtio-blk requests from a Device (and its writable side).
type blk struct {
	dev        blockdev.Device
	wdev       blockdev.WritableDevice // nil: read-only
	maxRequest uint64
	id         [blkIDBytes]byte
	bufs       sync.Pool    // *[]byte of maxRequest capacity
	log        *slog.Logger // failed reads are logged here, where they become IOERR
}

func newBlk(dev blockdev.Device, readOnly bool, maxRequest uint32, serial string) *blk {
	b := &blk{dev: dev, maxRequest: uint64(maxRequest), log: slog.New(slog.DiscardHandler)}
	if w, ok := dev.(blockdev.WritableDevice); ok && !readOnly {
		b.wdev = w
	}
	copy(b.id[:], serial)
	return b
}

// features is what the device offers (virtio and vhost-user bits).
func (b *blk) features() uint64 {
	f := uint64(featVersion1 | featProtocol | featBlkSegMax | featBlkBlkSize | featBlkFlush | featBlkTopology)
	if b.wdev == nil {
		f |= featBlkRO
	} else {
		f |= featBlkWriteZeroes
	}
	return f
}

// config is struct virtio_blk_config, padded to the largest config a
// front-end may ask for.
func (b *blk) config() []byte {
	c := make([]byte, maxConfigSize)
	binary.LittleEndian.PutUint64(c[0:], uint64(b.dev.Size())/sectorSize) // capacity
	binary.LittleEndian.PutUint32(c[12:], segMax)                         // seg_max
	binary.LittleEndian.PutUint32(c[20:], sectorSize)                     // blk_size
	c[24] = 3                                                             // physical_block_exp: 4 KiB
	binary.LittleEndian.PutUint16(c[26:], 8)                              // min_io_size (sectors)
	binary.LittleEndian.PutUint16(c[34:], 1)                              // num_queues
	if b.wdev != nil {
		binary.LittleEndian.PutUint32(c[48:], maxZeroSectors) // max_write_zeroes_sectors
		binary.LittleEndian.PutUint32(c[52:], 1)              // max_write_zeroes_seg
	}
	return c
}

// stream is a sequence of guest buffers read or written as one.
type stream [][]byte

// slice returns the buffers covering [off, off+n) of s.
func (s stream) slice(off, n uint64) stream {
	var out stream
	for _, b := range s {
		if n == 0 {
			break
		}
		l := uint64(len(b))
		if off >= l {
			off -= l
			continue
		}
		take := min(l-off, n)
		out = append(out, b[off:off+take])
		n -= take
		off = 0
	}
	return out
}

// copyTo copies s into p (len(p) is s's length).
func (s stream) copyTo(p []byte) {
	for _, b := range s {
		p = p[copy(p, b):]
	}
}

// copyFrom copies p into s.
func (s stream) copyFrom(p []byte) {
	for _, b := range s {
		p = p[copy(b, p):]
	}
}

// serve runs the request in c and returns the bytes written into its
// writable buffers (data and status) for the used ring. A chain too short
// for a header and a status byte gets nothing written.
func (b *blk) serve(ctx context.Context, c chain) uint32 {
	if c.inLen < outHdrSize || c.outLen < 1 {
		return 0
	}
	in, out := stream(c.in), stream(c.out)
	var hdr [outHdrSize]byte
	in.slice(0, outHdrSize).copyTo(hdr[:])
	typ, sector := binary.LittleEndian.Uint32(hdr[0:]), binary.LittleEndian.Uint64(hdr[8:])
	status := out.slice(c.outLen-1, 1)[0]
	written := uint32(1)
	var st byte
	switch typ {
	case blkTIn:
		n := c.outLen - 1
		st = b.read(ctx, out.slice(0, n), sector, n)
		if st == blkSOK {
			written += uint32(n)
		}
	case blkTOut:
		st = b.write(ctx, in.slice(outHdrSize, c.inLen-outHdrSize), sector, c.inLen-outHdrSize)
	case blkTFlush:
		st = blkSOK
		if b.wdev != nil && b.wdev.Flush(ctx) != nil {
			st = blkSIOErr
		}
	case blkTGetID:
		n := min(c.outLen-1, blkIDBytes)
		out.slice(0, n).copyFrom(b.id[:n])
		written += uint32(n)
		st = blkSOK
	case blkTWriteZeroes:
		st = b.writeZeroes(ctx, in.slice(outHdrSize, c.inLen-outHdrSize), c.inLen-outHdrSize)
	default:
		st = blkSUnsupp
	}
	status[0] = st
	return written
}

// inRange reports whether n bytes at sector lie within the device.
func (b *blk) inRange(sector, n uint64) bool {
	size := uint64(b.dev.Size())
	return sector <= size/sectorSize && n <= size-sector*sectorSize
}

func (b *blk) buffer(n uint64) (*[]byte, []byte) {
	p, _ := b.bufs.Get().(*[]byte)
	if p == nil || uint64(cap(*p)) < n {
		buf := make([]byte, n, max(n, 1<<20))
		p = &buf
	}
	return p, (*p)[:n]
}

func (b *blk) read(ctx context.Context, dst stream, sector, n uint64) byte {
	if n > b.maxRequest || !b.inRange(sector, n) {
		return blkSIOErr
	}
	off := int64(sector * sectorSize)
	if len(dst) == 1 {
		if _, err := b.dev.ReadAt(ctx, dst[0], off); err != nil && !errors.Is(err, io.EOF) {
			b.readFailed(ctx, off, n, err)
			return blkSIOErr
		}
		return blkSOK
	}
	p, buf := b.buffer(n)
	defer b.bufs.Put(p)
	if _, err := b.dev.ReadAt(ctx, buf, off); err != nil && !errors.Is(err, io.EOF) {
		b.readFailed(ctx, off, n, err)
		return blkSIOErr
	}
	dst.copyFrom(buf)
	return blkSOK
}

// readFailed logs a read that the guest gets as IOERR: the one log line of
// a failed read (the error names the chunk and image).
func (b *blk) readFailed(ctx context.Context, off int64, n uint64, err error) {
	if ctx.Err() == nil {
		b.log.Warn("vhost-user-blk read failed", slog.Int64("offset", off), slog.Uint64("length", n), slog.Any("err", err))
	}
}

func (b *blk) write(ctx context.Context, src stream, sector, n uint64) byte {
	if b.wdev == nil || n > b.maxRequest || !b.inRange(sector, n) {
		return blkSIOErr
	}
	off := int64(sector * sectorSize)
	var buf []byte
	if len(src) == 1 {
		buf = src[0]
	} else {
		var p *[]byte
		p, buf = b.buffer(n)
		defer b.bufs.Put(p)
		src.copyTo(buf)
	}
	if _, err := b.wdev.WriteAt(ctx, buf, off); err != nil {
		return blkSIOErr
	}
	return blkSOK
}

// writeZeroes serves WRITE_ZEROES: segments of {sector u64, num_sectors
// u32, flags u32}.
func (b *blk) writeZeroes(ctx context.Context, src stream, n uint64) byte {
	if b.wdev == nil || n == 0 || n%zeroSegSize != 0 || n > 64*zeroSegSize {
		return blkSIOErr
	}
	segs := make([]byte, n)
	src.copyTo(segs)
	for s := segs; len(s) > 0; s = s[zeroSegSize:] {
		sector, count := binary.LittleEndian.Uint64(s), uint64(binary.LittleEndian.Uint32(s[8:]))
		if count > maxZeroSectors || !b.inRange(sector, count*sectorSize) {
			return blkSIOErr
		}
		if err := b.wdev.ZeroAt(ctx, int64(sector*sectorSize), int64(count*sectorSize)); err != nil {
			return blkSIOErr
		}
	}
	return blkSOK
}
