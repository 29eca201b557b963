// Package blockdev owns the Device interface that every frontend serves
// (FUSE file for loop mounts in blockdev/fuse, NBD in blockdev/nbd) and the
// copy-on-write overlay that lets a VM write without touching the base image.
//
// It implements DESIGN.md, "The data path" (frontend). It knows nothing of
// chunks, tiers or stores: anything with ReadAt and Size can be served.
package blockdev
