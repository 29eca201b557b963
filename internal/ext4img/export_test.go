package ext4img

import (
	"fmt"
	"strings"
)

// FileExtents returns the extents (first block, length) of the file at
// path in the image: what TestAlignedLayout checks the layout against.
func FileExtents(img Output, path string) ([][2]uint32, error) {
	f, err := openFsys(img)
	if err != nil {
		return nil, err
	}
	ino := uint32(rootInode)
	for _, part := range strings.Split(path, "/") {
		_, ents, err := f.dir(ino)
		if err != nil {
			return nil, err
		}
		next := uint32(0)
		for _, e := range ents {
			if e.name == part {
				next = e.inode
			}
		}
		if next == 0 {
			return nil, fmt.Errorf("%s: no %s", path, part)
		}
		ino = next
	}
	node, err := f.readInode(ino)
	if err != nil {
		return nil, err
	}
	exts, err := f.extents(node)
	if err != nil {
		return nil, err
	}
	var out [][2]uint32
	for _, e := range exts {
		out = append(out, [2]uint32{e.start, e.len})
	}
	return out, nil
}

// SetMaxDiskSize lowers the image size limit (and with it the metadata reservation) for the fuzz target,
// and returns a function that restores it.
func SetMaxDiskSize(n int64) (restore func()) {
	old := maxDiskSize
	maxDiskSize = n
	return func() { maxDiskSize = old }
}
