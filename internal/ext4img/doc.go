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
// The writer does not place large files on chunk boundaries; see
// docs/decisions for the measured consequence.
package ext4img
