// Package run owns starting an image's entrypoint as a container on an
// image root that is already mounted read-only (the lazy FUSE + loop ext4
// mount made by the caller).
//
// It builds an OCI runtime bundle in a state directory on local disk: an
// overlayfs mount (lowerdir = the image root, upperdir and workdir under the
// state directory) as the writable rootfs, and a config.json whose process
// takes its arguments, environment, working directory and user from the
// image's config (manifest.Config) with `docker run IMAGE ARGS` override
// semantics. It then drives an OCI runtime binary (runc by default) through
// create + start, so that the time to the user process's exec is measured at
// the runtime's own boundary, passes stdio through, returns the container's
// exit status (signals as 128+n), and on every path deletes the container,
// unmounts the overlay and removes the state directory.
//
// It does not own mounting the image (blockdev/fuse and the CLI do that),
// fetching chunks, images' content, or the runtime itself.
//
// DESIGN.md: "Components", the run row: "mounting an image and starting its
// entrypoint as a container (runc/crun bundle or chroot)"; this package is
// the container half.
//
// Libraries: the OCI runtime spec types come from
// github.com/opencontainers/runtime-spec/specs-go. The image's /etc/passwd
// and /etc/group are parsed by hand (a few lines of colon-separated fields)
// rather than with runc's libcontainer/user, which would pull the whole of
// runc in; paths inside the image are resolved by hand with chroot
// semantics (symlinks, absolute or relative, never leave the root), in the
// manner of cyphar/filepath-securejoin, because the image root is read-only
// while it is resolved, so the race that library guards against cannot occur.
//
// Process-wide effect: Run makes the calling process a child subreaper
// (prctl PR_SET_CHILD_SUBREAPER) the first time it runs a container without a
// terminal. `runc create` exits once the container is created; its init
// process is then re-parented to the caller, which is how Run collects the
// container's exit status after `runc start`.
package run
