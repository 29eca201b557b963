package ext4img

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// More ext4 on-disk offsets (Documentation/filesystems/ext4), for the
// layout tar2ext4 writes: 4 KiB blocks, 32-byte group descriptors, no
// metadata checksums, directories in extent-mapped blocks.
const (
	sbFreeBlocks    = 12
	sbFreeInodes    = 16
	sbBlocksPerGrp  = 32
	sbInodeSize     = 88
	gdBlockBitmap   = 0
	gdInodeTable    = 8
	gdFreeBlocks    = 12
	gdFreeInodes    = 14
	inodeBlockArray = 40
	extentMagic     = 0xF30A
	rootInode       = 2
)

var le = binary.LittleEndian

// fsys reads and patches the metadata of a tar2ext4 image in place.
type fsys struct {
	rw        Output
	sb        []byte
	bpg, ipg  uint32
	inodeSize int64
}

func openFsys(rw Output) (*fsys, error) {
	sb := make([]byte, 1024)
	if _, err := rw.ReadAt(sb, superblockOffset); err != nil {
		return nil, fmt.Errorf("reading superblock: %w", err)
	}
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return nil, fmt.Errorf("reading superblock: bad magic %#x", le.Uint16(sb[sbMagic:]))
	}
	if bs := 1024 << le.Uint32(sb[sbLogBlockSize:]); bs != blockSize {
		return nil, fmt.Errorf("block size %d, want %d", bs, blockSize)
	}
	f := &fsys{rw: rw, sb: sb, bpg: le.Uint32(sb[sbBlocksPerGrp:]), ipg: le.Uint32(sb[sbInodesPerGroup:]), inodeSize: int64(le.Uint16(sb[sbInodeSize:]))}
	if f.bpg == 0 || f.ipg == 0 || f.inodeSize < 128 {
		return nil, fmt.Errorf("superblock: %d blocks and %d inodes per group, inodes of %d bytes", f.bpg, f.ipg, f.inodeSize)
	}
	return f, nil
}

func (f *fsys) groupDesc(g uint32) ([]byte, int64, error) {
	gd := make([]byte, groupDescSize)
	off := gdtBlock*blockSize + int64(g)*groupDescSize
	if _, err := f.rw.ReadAt(gd, off); err != nil {
		return nil, 0, fmt.Errorf("reading group descriptor %d: %w", g, err)
	}
	return gd, off, nil
}

func (f *fsys) inodeOffset(n uint32) (int64, error) {
	if n == 0 || n > le.Uint32(f.sb[sbInodesCount:]) {
		return 0, fmt.Errorf("inode %d out of range", n)
	}
	gd, _, err := f.groupDesc((n - 1) / f.ipg)
	if err != nil {
		return 0, err
	}
	return int64(le.Uint32(gd[gdInodeTable:]))*blockSize + int64((n-1)%f.ipg)*f.inodeSize, nil
}

func (f *fsys) readInode(n uint32) ([]byte, error) {
	off, err := f.inodeOffset(n)
	if err != nil {
		return nil, err
	}
	b := make([]byte, f.inodeSize)
	if _, err := f.rw.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("reading inode %d: %w", n, err)
	}
	return b, nil
}

// extent is a run of blocks of a file.
type extent struct{ logical, start, len uint32 }

// extents lists an inode's extents (a tree of any depth).
func (f *fsys) extents(node []byte) ([]extent, error) {
	return f.extentNode(node[inodeBlockArray:inodeBlockArray+60], 0, nil)
}

// extentNode lists the data extents under an extent node; index, if not
// nil, is told every index (non-leaf) block the walk reads.
func (f *fsys) extentNode(b []byte, depth int, index func(blk uint32)) ([]extent, error) {
	if len(b) < 12 || le.Uint16(b) != extentMagic || depth > 5 {
		return nil, errors.New("bad extent header")
	}
	entries, d := int(le.Uint16(b[2:])), le.Uint16(b[6:])
	if 12+12*entries > len(b) {
		return nil, errors.New("bad extent header")
	}
	var out []extent
	for i := range entries {
		e := b[12+12*i:]
		if d == 0 {
			n := uint32(le.Uint16(e[4:]))
			if n > 32768 {
				n -= 32768 // an uninitialized extent
			}
			out = append(out, extent{logical: le.Uint32(e), start: le.Uint32(e[8:]), len: n})
			continue
		}
		leaf := le.Uint32(e[4:])
		if index != nil {
			index(leaf)
		}
		blk := make([]byte, blockSize)
		if _, err := f.rw.ReadAt(blk, int64(leaf)*blockSize); err != nil {
			return nil, err
		}
		sub, err := f.extentNode(blk, depth+1, index)
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	return out, nil
}

// dirent is one directory entry.
type dirent struct {
	inode uint32
	typ   uint8
	name  string
}

// dir returns the blocks of directory inode n, in order, and its
// entries.
func (f *fsys) dir(n uint32) ([]uint32, []dirent, error) {
	node, err := f.readInode(n)
	if err != nil {
		return nil, nil, err
	}
	exts, err := f.extents(node)
	if err != nil {
		return nil, nil, fmt.Errorf("directory inode %d: %w", n, err)
	}
	var blocks []uint32
	for _, e := range exts {
		for i := range e.len {
			blocks = append(blocks, e.start+i)
		}
	}
	var ents []dirent
	b := make([]byte, blockSize)
	for _, blk := range blocks {
		if _, err := f.rw.ReadAt(b, int64(blk)*blockSize); err != nil {
			return nil, nil, fmt.Errorf("reading directory %d block %d: %w", n, blk, err)
		}
		for off := 0; off+8 <= blockSize; {
			ino, rl, nl := le.Uint32(b[off:]), int(le.Uint16(b[off+4:])), int(b[off+6])
			if rl < 8 || off+rl > blockSize || 8+nl > rl {
				return nil, nil, fmt.Errorf("directory inode %d block %d: bad entry at %d", n, blk, off)
			}
			if ino != 0 {
				ents = append(ents, dirent{inode: ino, typ: b[off+7], name: string(b[off+8 : off+8+nl])})
			}
			off += rl
		}
	}
	return blocks, ents, nil
}

// writeDir rewrites a directory's blocks with ents, packed in order as
// tar2ext4 writes them (each block closed by an empty entry); blocks left
// over hold one empty entry each.
func (f *fsys) writeDir(blocks []uint32, ents []dirent) error {
	b := make([]byte, blockSize)
	bi, off := 0, 0
	flush := func() error {
		if bi >= len(blocks) {
			return errors.New("directory entries do not fit their blocks")
		}
		le.PutUint32(b[off:], 0)
		le.PutUint16(b[off+4:], uint16(blockSize-off))
		_, err := f.rw.WriteAt(b, int64(blocks[bi])*blockSize)
		clear(b)
		bi, off = bi+1, 0
		return err
	}
	for _, e := range ents {
		rl := (8 + len(e.name) + 3) &^ 3
		if blockSize-off < rl+12 {
			if err := flush(); err != nil {
				return err
			}
		}
		le.PutUint32(b[off:], e.inode)
		le.PutUint16(b[off+4:], uint16(rl))
		b[off+6], b[off+7] = uint8(len(e.name)), e.typ
		copy(b[off+8:], e.name)
		off += rl
	}
	for bi < len(blocks) {
		if err := flush(); err != nil {
			return err
		}
	}
	return nil
}

// clearBit clears bit i of the bitmap block at blk.
func (f *fsys) clearBit(blk uint32, i uint32) error {
	var b [1]byte
	off := int64(blk)*blockSize + int64(i/8)
	if _, err := f.rw.ReadAt(b[:], off); err != nil {
		return err
	}
	if b[0]&(1<<(i%8)) == 0 {
		return fmt.Errorf("bit %d of bitmap block %d already clear", i, blk)
	}
	b[0] &^= 1 << (i % 8)
	_, err := f.rw.WriteAt(b[:], off)
	return err
}

// addFree adds n to a 16-bit group counter and the 32-bit superblock one.
func (f *fsys) addFree(g uint32, gdField, sbField int, n uint32) error {
	gd, off, err := f.groupDesc(g)
	if err != nil {
		return err
	}
	le.PutUint16(gd[gdField:], le.Uint16(gd[gdField:])+uint16(n))
	if _, err := f.rw.WriteAt(gd, off); err != nil {
		return err
	}
	le.PutUint32(f.sb[sbField:], le.Uint32(f.sb[sbField:])+n)
	return nil
}

// freeInode frees inode n and its data blocks.
func (f *fsys) freeInode(n uint32) error {
	node, err := f.readInode(n)
	if err != nil {
		return err
	}
	exts, err := f.extents(node)
	if err != nil {
		return fmt.Errorf("inode %d: %w", n, err)
	}
	for _, e := range exts {
		for b := e.start; b < e.start+e.len; b++ {
			g := b / f.bpg
			gd, _, err := f.groupDesc(g)
			if err != nil {
				return err
			}
			if err := f.clearBit(le.Uint32(gd[gdBlockBitmap:]), b%f.bpg); err != nil {
				return fmt.Errorf("freeing block %d of inode %d: %w", b, n, err)
			}
			if err := f.addFree(g, gdFreeBlocks, sbFreeBlocks, 1); err != nil {
				return err
			}
		}
	}
	g := (n - 1) / f.ipg
	gd, _, err := f.groupDesc(g)
	if err != nil {
		return err
	}
	if err := f.clearBit(le.Uint32(gd[gdInodeBitmapLow:]), (n-1)%f.ipg); err != nil {
		return fmt.Errorf("freeing inode %d: %w", n, err)
	}
	if err := f.addFree(g, gdFreeInodes, sbFreeInodes, 1); err != nil {
		return err
	}
	off, err := f.inodeOffset(n)
	if err != nil {
		return err
	}
	_, err = f.rw.WriteAt(make([]byte, f.inodeSize), off)
	return err
}

// removePads unlinks the padding files from lost+found and frees their
// inodes and blocks; it returns how many it removed.
func removePads(rw Output) (int, error) {
	f, err := openFsys(rw)
	if err != nil {
		return 0, err
	}
	_, rootEnts, err := f.dir(rootInode)
	if err != nil {
		return 0, err
	}
	var lf uint32
	for _, e := range rootEnts {
		if e.name == padDir {
			lf = e.inode
		}
	}
	if lf == 0 {
		return 0, errors.New("no lost+found in the image")
	}
	blocks, ents, err := f.dir(lf)
	if err != nil {
		return 0, err
	}
	var keep []dirent
	var pads []uint32
	for _, e := range ents {
		if strings.HasPrefix(e.name, padPrefix) {
			pads = append(pads, e.inode)
		} else {
			keep = append(keep, e)
		}
	}
	if len(pads) == 0 {
		return 0, nil
	}
	if err := f.writeDir(blocks, keep); err != nil {
		return 0, fmt.Errorf("rewriting lost+found: %w", err)
	}
	for _, n := range pads {
		if err := f.freeInode(n); err != nil {
			return 0, fmt.Errorf("removing padding file: %w", err)
		}
	}
	if _, err := rw.WriteAt(f.sb, superblockOffset); err != nil {
		return 0, fmt.Errorf("writing superblock: %w", err)
	}
	return len(pads), nil
}
