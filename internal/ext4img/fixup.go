package ext4img

import "fmt"

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
	f, err := openFsys(rw)
	if err != nil {
		return fmt.Errorf("fixing inode bitmaps: %w", err)
	}
	if f.ipg > supportedBlockSize*8 {
		return fmt.Errorf("fixing inode bitmaps: %d inodes per group", f.ipg)
	}
	if f.ipg == supportedBlockSize*8 {
		return nil // no padding
	}
	groups := (le.Uint32(f.sb[sbInodesCount:]) + f.ipg - 1) / f.ipg
	bm := make([]byte, supportedBlockSize)
	for g := uint32(0); g < groups; g++ {
		gd, _, err := f.groupDesc(g)
		if err != nil {
			return err
		}
		off := int64(le.Uint32(gd[gdInodeBitmapLow:])) * supportedBlockSize
		if _, err := rw.ReadAt(bm, off); err != nil {
			return fmt.Errorf("reading inode bitmap of group %d: %w", g, err)
		}
		for bit := f.ipg; bit < supportedBlockSize*8; bit++ {
			bm[bit/8] |= 1 << (bit % 8)
		}
		if _, err := rw.WriteAt(bm, off); err != nil {
			return fmt.Errorf("writing inode bitmap of group %d: %w", g, err)
		}
	}
	return nil
}
