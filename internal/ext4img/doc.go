// Package ext4img owns turning a flattened tar stream into a deterministic
// ext4 filesystem image.
//
// It implements DESIGN.md, "The data path" (deterministic ext4) and "Layout
// and dedup". It wraps Microsoft/hcsshim's ext4/tar2ext4, a sequential,
// pure-Go tar→ext4 writer: it takes every timestamp from the tar headers,
// uses no clock and no randomness, and writes file data in stream order with
// the inode tables and directories after the data, so identical input gives
// identical bytes and an appended layer only changes the image's tail. The
// metadata reservation is sized from a fixed maximum (MaxDiskSize), never from
// the input, because a reservation that grows with the input would shift every
// later byte off the chunk grid and destroy deduplication between an image and
// the same image plus a layer.
//
// BuildEntries takes the entries from a producer (lode build's flattener) instead of a stream, through a
// buffered pipe (pipe.go) so that producer and tar2ext4 run at once.
//
// Options.Align adds the chunk-aligned layout (align.go, pads.go): tar2ext4
// offers no control of block placement, so the stream is rewritten on its
// way in with a zero-filled padding file before each large file, sized by
// following tar2ext4's allocation, and the padding files are then unlinked
// and their blocks and inodes freed by a small in-place edit of the image's
// metadata. That edit and the allocation model are hand-written because no
// Go ext4 library writes or edits images with control of placement; they
// cover only what tar2ext4 produces (4 KiB blocks, 32-byte descriptors, no
// metadata checksums) and are checked against the written image by the
// tests (e2fsck, a loop mount, and every large file's first block). See
// docs/decisions/20261123-ext4-writer.md.
package ext4img
