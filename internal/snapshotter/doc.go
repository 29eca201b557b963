// Package snapshotter is lode's containerd remote snapshotter: an
// implementation of containerd's snapshots.Snapshotter that containerd
// reaches through its [proxy_plugins] over the snapshots v1 gRPC API
// (served by containerd's contrib/snapshotservice adapter, see Serve).
//
// Owns: the snapshot state under its root (containerd's bolt metastore in
// metadata.db, the overlay directories in snapshots/, the image mount
// points in mounts/), the CRI label parsing, which snapshots are remote,
// and materializing a remote lower chain that an unknown image builds on.
// Does not own: image lookup (Images, answered by the catalog), mounting
// (Mounter, answered by the worker daemon: one mount per image, shared,
// served through its tiers), or the registry (Layers fetches blobs only to
// materialize).
//
// How a pull goes (DESIGN.md, "containerd snapshotter"). containerd's
// unpacker Prepares each layer with the label containerd.io/snapshot.ref
// naming the chain ID it wants and, with CRI or the Go client's
// snapshot-label handler, containerd.io/snapshot/cri.* labels naming the
// image, its manifest digest and the layers. When Images knows the manifest
// digest, every layer is committed at once as a remote snapshot and Prepare
// answers errdefs.ErrAlreadyExists, so containerd downloads no blob. The
// top chain's snapshot stands for the flattened lode image: a container's
// active snapshot on it is overlayfs with lowerdir = the image's mount and
// upper/work on local disk. Lower chains are "remote-lower": they have no
// files. If an image lode does not know later builds on one (same base,
// another top), the chain is materialized first: its layers are fetched
// from the registry and unpacked, as containerd would have done.
//
// Everything else is containerd's own overlayfs snapshotter
// (plugins/snapshots/overlay), wrapped with a shared metastore: the
// fallback for unknown images is exactly what containerd does without
// lode. It is never silent: a log line with the image and
// lode_snapshotter_fallback_total.
//
// Written here by hand, and why: only the decisions above (which labels
// mean what, when to answer remote, how to rewrite a mount's lowerdir);
// the protocol, the metastore, the overlay logic, the tar applier and the
// registry client are containerd's packages.
package snapshotter
