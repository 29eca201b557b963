package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Split virtqueue layout (virtio 1.1, 2.6).
const (
	descSize      = 16
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4
	// maxQueueSize is the largest split ring.
	maxQueueSize = 32768
)

// errChain reports a descriptor chain the device cannot use.
var errChain = errors.New("bad descriptor chain")

// chain is one request's buffers, translated into guest memory: first the
// device-readable ones (in), then the device-writable ones (out).
type chain struct {
	head          uint16
	in, out       [][]byte
	inLen, outLen uint64
}

// walkChain follows the chain starting at head through the descriptor
// table desc (num entries of 16 bytes) and translates every buffer with
// mem. It refuses an index past the table, a loop (more than num
// descriptors), a readable buffer after a writable one, an indirect
// table (VIRTIO_RING_F_INDIRECT_DESC is not offered), a buffer outside
// guest memory, and more than maxSegs buffers.
func walkChain(mem *guestMemory, desc []byte, num uint16, head uint16, maxSegs int) (chain, error) {
	c := chain{head: head}
	if uint64(len(desc)) < uint64(num)*descSize {
		return c, fmt.Errorf("%w: table of %d bytes for %d descriptors", errChain, len(desc), num)
	}
	i := head
	for n := 0; ; n++ {
		if i >= num {
			return c, fmt.Errorf("%w: descriptor %d of a %d-entry table", errChain, i, num)
		}
		if n >= int(num) || n >= maxSegs {
			return c, fmt.Errorf("%w: chain from %d longer than %d", errChain, head, min(int(num), maxSegs))
		}
		d := desc[int(i)*descSize:]
		addr, length := binary.LittleEndian.Uint64(d), binary.LittleEndian.Uint32(d[8:])
		flags, next := binary.LittleEndian.Uint16(d[12:]), binary.LittleEndian.Uint16(d[14:])
		if flags&descFIndirect != 0 {
			return c, fmt.Errorf("%w: indirect descriptor %d", errChain, i)
		}
		buf, ok := mem.guestRange(addr, uint64(length))
		if !ok {
			return c, fmt.Errorf("%w: descriptor %d: %d bytes at %#x outside guest memory", errChain, i, length, addr)
		}
		if flags&descFWrite != 0 {
			c.out = append(c.out, buf)
			c.outLen += uint64(length)
		} else {
			if len(c.out) > 0 {
				return c, fmt.Errorf("%w: readable descriptor %d after a writable one", errChain, i)
			}
			c.in = append(c.in, buf)
			c.inLen += uint64(length)
		}
		if flags&descFNext == 0 {
			return c, nil
		}
		i = next
	}
}

// vring is a running split virtqueue over guest memory. The kick loop
// alone pops (lastAvail); completions push under mu from any goroutine.
type vring struct {
	num   uint16
	desc  []byte
	avail []byte
	used  []byte

	lastAvail uint16 // next available entry to pop; kick loop only

	mu      sync.Mutex // guards usedIdx and the used ring's entries
	usedIdx uint16
}

// newVring places a ring of num entries at the front-end addresses a. The
// used ring must be 4-byte aligned (the spec requires it), so that its
// index is stored with one atomic write.
func newVring(mem *guestMemory, num uint16, a vringAddr) (*vring, error) {
	if num == 0 || num&(num-1) != 0 {
		return nil, fmt.Errorf("%w: queue size %d", ErrProtocol, num)
	}
	q := &vring{num: num}
	var ok bool
	if q.desc, ok = mem.userRange(a.Desc, uint64(num)*descSize); !ok {
		return nil, fmt.Errorf("%w: descriptor table at %#x outside guest memory", ErrProtocol, a.Desc)
	}
	if q.avail, ok = mem.userRange(a.Avail, 4+2*uint64(num)); !ok {
		return nil, fmt.Errorf("%w: available ring at %#x outside guest memory", ErrProtocol, a.Avail)
	}
	if q.used, ok = mem.userRange(a.Used, 4+8*uint64(num)); !ok {
		return nil, fmt.Errorf("%w: used ring at %#x outside guest memory", ErrProtocol, a.Used)
	}
	if uintptr(unsafe.Pointer(&q.used[0]))%4 != 0 || uintptr(unsafe.Pointer(&q.avail[0]))%2 != 0 {
		return nil, fmt.Errorf("%w: misaligned rings (avail %#x, used %#x)", ErrProtocol, a.Avail, a.Used)
	}
	q.usedIdx = binary.LittleEndian.Uint16(q.used[2:])
	return q, nil
}

// availIdx is the driver's available index. The ring's first word holds
// flags and index; where it is 4-byte aligned it is read atomically.
func (q *vring) availIdx() uint16 {
	if p := unsafe.Pointer(&q.avail[0]); uintptr(p)%4 == 0 {
		return uint16(atomic.LoadUint32((*uint32)(p)) >> 16)
	}
	return binary.LittleEndian.Uint16(q.avail[2:])
}

// pending is how many entries the driver has made available, or an
// error if that exceeds the ring (a broken driver).
func (q *vring) pending() (uint16, error) {
	n := q.availIdx() - q.lastAvail
	if n > q.num {
		return 0, fmt.Errorf("%w: available index %d is %d ahead of %d on a %d-entry ring", errChain, q.availIdx(), n, q.lastAvail, q.num)
	}
	return n, nil
}

// pop takes the next available head (callers checked pending).
func (q *vring) pop() uint16 {
	head := binary.LittleEndian.Uint16(q.avail[4+2*int(q.lastAvail%q.num):])
	q.lastAvail++
	return head
}

// push returns a used chain with the number of bytes written into its
// writable buffers, then publishes the new used index.
func (q *vring) push(head uint16, written uint32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.used[4+8*int(q.usedIdx%q.num):]
	binary.LittleEndian.PutUint32(e, uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.usedIdx++
	// Flags (0: notify us) and index in one store, after the entry.
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&q.used[0])), uint32(q.usedIdx)<<16)
}
