// Package demo owns the sample image that `lode demo` builds and runs: a
// real multi-layer OCI image layout, written with go-containerregistry, whose
// base layer holds a working userland copied from the host (a shell, core
// tools, Python if the host has it, and the shared libraries they load), an
// application layer with a start script, and a large payload layer that the
// start never reads — the shape of the images the paper measured, where a
// start touches a few percent of the bytes.
//
// It knows nothing of lode's storage; it only writes an image that
// internal/oci can read.
package demo
