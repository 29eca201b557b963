package vhost

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// region is one guest memory region mapped into this process: data holds
// the region's size bytes, which the guest sees at guest and the front-end
// at user.
type region struct {
	guest, user uint64
	data        []byte
	mapping     []byte // the whole mmap to undo; nil when not mapped
}

// guestMemory is the guest's memory as SET_MEM_TABLE describes it. Every
// address the guest or the front-end gives is translated through it, and
// a translation succeeds only when the whole range lies in one region.
type guestMemory struct {
	regions []region
}

// span returns the n bytes at addr of data, which starts at base, or
// false when any of them is outside data.
func span(data []byte, base, addr, n uint64) ([]byte, bool) {
	size := uint64(len(data))
	if addr < base || addr-base > size || n > size-(addr-base) {
		return nil, false
	}
	off := addr - base
	return data[off : off+n : off+n], true
}

// guestRange returns the n bytes at guest physical address addr.
func (m *guestMemory) guestRange(addr, n uint64) ([]byte, bool) {
	for i := range m.regions {
		if b, ok := span(m.regions[i].data, m.regions[i].guest, addr, n); ok {
			return b, true
		}
	}
	return nil, false
}

// userRange returns the n bytes at the front-end's virtual address addr
// (SET_VRING_ADDR gives ring addresses that way).
func (m *guestMemory) userRange(addr, n uint64) ([]byte, bool) {
	for i := range m.regions {
		if b, ok := span(m.regions[i].data, m.regions[i].user, addr, n); ok {
			return b, true
		}
	}
	return nil, false
}

// mapMemory maps each region's fd (shared, read-write) from file offset 0
// through MmapOffset+Size, as the region starts MmapOffset bytes into its
// file. It does not close the fds: the caller does, mapping or not.
func mapMemory(regs []memRegion, fds []int) (*guestMemory, error) {
	if len(regs) != len(fds) {
		return nil, fmt.Errorf("mapping guest memory: %d regions, %d file descriptors", len(regs), len(fds))
	}
	m := &guestMemory{}
	for i, r := range regs {
		length := r.MmapOffset + r.Size
		if length > 1<<47 || int64(length) < 0 {
			m.unmap()
			return nil, fmt.Errorf("mapping guest memory region %d: %d bytes", i, length)
		}
		b, err := unix.Mmap(fds[i], 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			m.unmap()
			return nil, fmt.Errorf("mapping guest memory region %d (%d bytes at guest %#x): %w", i, length, r.GuestAddr, err)
		}
		m.regions = append(m.regions, region{guest: r.GuestAddr, user: r.UserAddr, data: b[r.MmapOffset:length:length], mapping: b})
	}
	return m, nil
}

// unmap releases the mappings. The memory must no longer be used.
func (m *guestMemory) unmap() {
	if m == nil {
		return
	}
	for _, r := range m.regions {
		if r.mapping != nil {
			unix.Munmap(r.mapping)
		}
	}
	m.regions = nil
}
