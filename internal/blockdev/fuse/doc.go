// Package fuse exposes a blockdev.Device as a read-only regular file through
// FUSE and, in MountImage, loop-mounts that file read-only as ext4: the
// `lode mount` / `lode umount` frontend of DESIGN.md, "The data path".
//
// It owns: the one-file FUSE filesystem (ServeFile), the loop device over it,
// the read-only mount, a state directory per mount (default
// /run/lode/mounts/<hash of dir>/ with the FUSE mount point and state.json)
// so that another process can tear it down (Unmount), and crash recovery
// (Recover, used by `lode doctor`; the manual steps are in
// docs/operations.md ("Crash recovery")). It does not own the Device (the agent's image), the
// container that uses the mount (internal/run), or the CLI.
//
// FUSE server: session.go, a small hand-written server for this one-file
// filesystem (node 1 the root directory, node 2 the file), with
// hanwen/go-fuse/v2 used only for its protocol structs. go-fuse cannot
// hand a live session to another process: its server always waits for
// FUSE_INIT, which the kernel sends once per connection, and its readers
// block in read(2) with no way to stop them short of unmounting, so a
// stopping process would take requests it never answers (the loop
// device's I/O would hang). Here one reader polls the non-blocking
// /dev/fuse descriptor together with an eventfd: told to stop, it takes no
// further request, and stopping returns once every request already taken
// is answered. Every mount is served this way, so every mount can be
// handed over (HandOver, ReceiveHandover, Handover.Adopt: the descriptor
// over a unix socket with SCM_RIGHTS plus the negotiated INIT parameters;
// `lode agent --takeover` uses it for upgrades). The FUSE mount is made
// with mount(2) directly since lode runs as root. Loop devices are bound
// with ioctls from
// golang.org/x/sys/unix (LOOP_CTL_GET_FREE, then LOOP_CONFIGURE with
// LO_FLAGS_READ_ONLY|LO_FLAGS_AUTOCLEAR) rather than the losetup binary:
// one syscall binds the file atomically, there is no output to parse, and
// autoclear means the device disappears by itself when the filesystem is
// unmounted, even if lode has crashed.
//
// Caching: ext4 already caches every page it reads, so the FUSE file is
// opened with FOPEN_DIRECT_IO (no second copy in the FUSE file's page cache;
// Options.PageCache turns it back on). Read size then comes from the loop
// device's readahead, 512 KiB (MountOptions.ReadAheadKB), and FUSE
// reads go up to 1 MiB (Options.MaxRead, the kernel's ceiling; max_pages
// 256), each answered on its own goroutine. BenchmarkWarmSequentialRead compares a
// sequential read through this stack with a loop mount of a local file.
//
// Failure semantics: a Device error is EIO to the reader. Every Device read
// gets a context that ends when the kernel interrupts the request (the
// reader got a signal; it is answered EINTR) or the mount is closed, so Close never waits on a stalled Device: it fails reads
// in flight, unmounts (retrying while busy, then lazily), lets autoclear
// detach the loop device, and unmounts the FUSE file, aborting its
// connection through fusectl if a lazily detached filesystem still holds it.
// If the serving process dies, the kernel aborts its FUSE connection: reads
// fail with EIO instead of hanging, and Recover (or the manual steps)
// removes the leftovers. A handover is not a death: the old process
// returns without unmounting, requests queue in the kernel until the new
// one reads them, and the new one rewrites state.json with its pid.
package fuse
