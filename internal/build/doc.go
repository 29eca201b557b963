// Package build owns the write pipeline: source image → flattened tar →
// deterministic ext4 → chunks → convergent encryption → store, then the
// sealed manifest and the image pointer.
//
// It implements DESIGN.md, "The data path" (left half) and the salt policy
// of "Formats". It composes oci, ext4img, chunk, manifest and store and adds
// only ordering and concurrency: chunks are sealed and uploaded by a bounded
// pool of workers, each chunk is uploaded only if the active root lacks it,
// and the manifest is written last, so a failed build leaves no manifest and
// overwrites nothing (chunk objects are content-addressed and written with
// PutIfAbsent). The image pointer is written through catalog.Put.
// termprogress.go draws lode build's progress on a terminal (TermProgress,
// PullProgress).
//
// Salt policy: salt = SHA-256("lode/salt/v1" ‖ 0 ‖ root ‖ 0 ‖ domain). It
// depends on the active root (it changes when the garbage collector rotates
// roots, bounding how many images one stored object serves) and an optional
// placement domain, never on the image or the chunk's position, so identical
// chunks of all images built into one root and domain share one object.
package build
