// Package catalog owns the images of each tenant as the store records them:
// image pointers (images/<tenant>/<name>) resolved to sealed manifests, and
// the questions asked of them (list, resolve, inspect, delete).
//
// It sits between the store layout (store/keys.go, store/pointer.go) and the
// manifest format, so that the CLI, the agent's mounts and the garbage
// collector resolve an image the same way. The pointer names the root the
// manifest lives in, so a mount always reads the image's current root.
package catalog
