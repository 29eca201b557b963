package ext4img

import (
	"encoding/binary"
	"fmt"
)

// ext4 on-disk offsets used by fixInodeBitmapPadding (see the kernel's
// Documentation/filesystems/ext4/globals.rst). The writer uses 4 KiB blocks,
// 32-byte group descriptors (no 64bit feature) and no metadata checksums.
const (
	superblockOffset   = 1024
	sbInodesCount      = 0
	sbInodesPerGroup   = 40
	sbLogBlockSize     = 24
	sbMagic            = 56
	ext4Magic          = 0xEF53
	gdtBlock           = 1
	groupDescSize      = 32
	gdInodeBitmapLow   = 4
	supportedBlockSize = 4096
)

// fixInodeBitmapPadding sets the padding bits of every inode bitmap: the
// bits past inodes-per-group up to the end of the bitmap block. The kernel
// ignores them, but e2fsck requires them set ("Padding at end of inode
// bitmap is not set"), and tar2ext4 leaves them clear when inodes-per-group
// is not a multiple of 32768. The fix is deterministic, so images stay
// byte-for-byte reproducible.
func fixInodeBitmapPadding(rw Output) error {
	sb := make([]byte, 1024)
	if _, err := rw.ReadAt(sb, superblockOffset); err != nil {
		return fmt.Errorf("reading superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return fmt.Errorf("reading superblock: bad magic %#x", le.Uint16(sb[sbMagic:]))
	}
	if bs := 1024 << le.Uint32(sb[sbLogBlockSize:]); bs != supportedBlockSize {
		return fmt.Errorf("fixing inode bitmaps: block size %d, want %d", bs, supportedBlockSize)
	}
	inodes, ipg := le.Uint32(sb[sbInodesCount:]), le.Uint32(sb[sbInodesPerGroup:])
	if ipg == 0 || ipg > supportedBlockSize*8 {
		return fmt.Errorf("fixing inode bitmaps: %d inodes per group", ipg)
	}
	if ipg == supportedBlockSize*8 {
		return nil // no padding
	}
	groups := (inodes + ipg - 1) / ipg
	gd := make([]byte, groupDescSize)
	bm := make([]byte, supportedBlockSize)
	for g := uint32(0); g < groups; g++ {
		if _, err := rw.ReadAt(gd, gdtBlock*supportedBlockSize+int64(g)*groupDescSize); err != nil {
			return fmt.Errorf("reading group descriptor %d: %w", g, err)
		}
		off := int64(le.Uint32(gd[gdInodeBitmapLow:])) * supportedBlockSize
		if _, err := rw.ReadAt(bm, off); err != nil {
			return fmt.Errorf("reading inode bitmap of group %d: %w", g, err)
		}
		for bit := ipg; bit < supportedBlockSize*8; bit++ {
			bm[bit/8] |= 1 << (bit % 8)
		}
		if _, err := rw.WriteAt(bm, off); err != nil {
			return fmt.Errorf("writing inode bitmap of group %d: %w", g, err)
		}
	}
	return nil
}
