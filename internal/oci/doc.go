// Package oci reads container images and flattens their layers into one safe, deterministic tar stream,
// the input of the tar→ext4 converter (internal/ext4img, hcsshim's tar2ext4).
//
// Owns: opening image sources (registry, OCI image layout, docker-archive, rootfs tar), verifying what
// is read against its digests, applying whiteouts and opaque directories, the order of the flattened
// stream, and refusing unsafe entries. Does not own: the filesystem image (ext4img), chunking, storage.
// DESIGN.md sections: "The data path, end to end", "Layout and dedup", "Errors and bad input", "Where
// lode meets its users' systems" (registry source).
//
// # Registries
//
// docker://HOST/REPO[:TAG|@DIGEST] is read with ggcr's remote package (remote.go): credentials from
// the files users already have (auth.go), an index resolved by platform, TLS with the system roots plus
// an extra CA, plain HTTP only for hosts named insecure, retries with backoff, a stall deadline. Layers
// download concurrently, ahead of the flattener, into short-lived spools (remote_fetch.go); each
// compressed byte is read from the registry once.
//
// Library: go-containerregistry (ggcr) parses layouts, docker-archives, manifests and configs. Flattening
// is written here because ggcr's mutate.Extract walks layers newest first, the order "Layout and dedup"
// measured to destroy chunk sharing.
//
// # Verification
//
// ggcr v0.22.1 does not verify blobs it reads from disk: pkg/v1/layout opens blobs/<alg>/<hex> and
// returns its bytes (manifest, config and layers alike), and pkg/v1/tarball returns docker-archive
// files as they are (it computes a synthetic manifest by hashing, which checks nothing). So Open checks the
// manifest (against the index descriptor) and the config (against the manifest), and every read of a
// layer hashes the raw blob and the uncompressed tar and compares them, at the end of the stream, with the
// layer digest and the config's diff ID (layout), or the diff ID (docker-archive), or the file digest taken
// by Open (rootfs). A mismatch is ErrCorrupt naming the layer. Because the check happens at the end of a
// layer, Flatten may already have written part of that layer: on any error the output must be discarded.
// Layers are decompressed here (gzip or zstd, detected by magic bytes, klauspost/compress), not by ggcr,
// so that one read yields both hashes.
//
// # Order of the flattened stream
//
// Pass 1 reads every layer's headers (all layers, base included, so that duplicates and hard links inside
// the base layer are resolved too) and builds the merged tree. Within a layer, whiteouts (.wh.NAME) and
// opaque markers (.wh..wh..opq) are applied first, to lower layers only, wherever they sit in the tar;
// then entries in tar order. An entry replaces what was at its path (a directory replacing a directory
// merges). Pass 2 reads every layer again, base first, and writes each surviving entry at its position:
// the base layer's survivors in its tar order, then the next layer's, and so on. A directory is written
// once, at its first (lowest) position, with the attributes of its topmost declaration. A directory that is
// only implied by deeper paths and never declared is not written: tar2ext4 creates it (with the root's
// attributes). The root is written as "." (if some layer declares it) so that its attributes are kept.
// Whiteouts and aufs metadata (.wh..wh.*) are never written. FlattenOnce writes the same stream for a
// single-layer image in one read when its tar is in stream order (no path twice, no directory after its
// children, hard links after their targets), and otherwise answers ErrTwoPasses (once.go). The output is PAX: mode (with setuid bits),
// numeric uid/gid, mtime/atime/ctime to the nanosecond, symlink targets verbatim, device numbers and
// SCHILY.xattr.* records; user and group names and other PAX records are dropped. Same input, same bytes.
//
// # Hard links
//
// A hard link refers to the file its target path holds at that point of the layer sequence; a target
// that does not exist there, a directory, or the link itself is refused. In the output every link points to
// an entry already written. If the original file does not survive (deleted or replaced above) but a link
// to it does, the first surviving link is written as the file itself (content spooled to an unlinked temp
// file during pass 2) and later links point to it.
//
// # Safety policy
//
// Refused with ErrUnsafeEntry: absolute names, names whose cleaned form escapes the root ("../x",
// "a/../../x"), hard link targets likewise, relative symlink targets that lexically leave the root from
// the symlink's directory, whiteouts of "." or "..", device nodes outside /dev unless AllowDevices, setuid/setgid
// non-directories unless AllowSetuid, and the limits in FlattenOptions. Device nodes under /dev are
// dropped (counted in FlattenStats.DroppedDevices) unless AllowDevices: runtimes mount their own /dev
// over the image's (docs/decisions/20261203-device-nodes.md); elsewhere they are refused. Absolute symlink targets are
// allowed: at run time they resolve inside the container's root (runc, chroot), and real images depend on
// them (Debian's /etc/alternatives). Names are normalised ("./a/b/" → "a/b"). An entry below a path that is
// not a directory at that point (for example below a symlink of a lower layer) is ErrUnsupported: lode never
// writes through symlinks. Tar entry types other than regular (GNU sparse files arrive expanded), directory,
// symlink, hard link, character or block device and FIFO are ErrUnsupported. Truncated or corrupt tar,
// gzip or zstd input is ErrCorrupt.
//
// # rootfs
//
// A rootfs tar is one layer whose Config is empty: the caller decides what to run.
package oci
