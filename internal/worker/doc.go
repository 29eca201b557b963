// Package worker is lode's read side on one machine: how a worker composes
// its tiers, opens images on them, mounts and runs them, and the daemon
// (`lode agent`) that serves many images from one warm cache.
//
// It owns:
//   - the tier stack (stack.go): NewStack is the one constructor every
//     worker calls — lode mount, run, serve-nbd, serve-vhost, vm, the
//     daemon, the containerd snapshotter and bench/starts. Memory → disk →
//     fleet → origin; Options.ProtectOrigin is the one place the order of the
//     origin's limits is decided: Coordinate(Limit(Retry(RateLimit(origin))),
//     fleet);
//   - one image on a stack of its own (image.go: Open, Device, WriteStats)
//     and the mount-and-run sequence (mount.go: Image.Mount is lode mount's,
//     Image.Run lode run's: profile prefetch, background fill (fill.go),
//     FUSE mount, runc; record.go: Image.AfterRun records the startup profile
//     and draws the heatmap; background.go: lode mount --background), lode
//     vm's (vm.go: Image.RunVM) and lode serve-vhost's (vhost.go);
//   - lode doctor (doctor.go: Doctor runs the scanners that live beside
//     what they scan);
//   - the daemon (daemon.go): the served-image lifecycle on one stack, root
//     checks and GC alarms, following repoints; its HTTP control API on a
//     unix socket (api.go) and the client the `lode agent` subcommands use
//     (client.go); the takeover protocol that hands mounts to a new daemon
//     over SCM_RIGHTS (takeover.go).
//
// What an in-process user of the daemon (the containerd snapshotter) needs
// is two calls (service.go):
//   - Daemon.MountImage(ctx, tenant, image, dir) mounts an image read-only
//     through the daemon, as POST /v1/mounts does (shared caches, status,
//     repoints, takeover), and returns the release that unmounts it;
//   - Daemon.AddService registers an extra server (a gRPC server) on a unix
//     socket of its own, started once the control socket serves and stopped
//     at shutdown or when a new daemon takes over, before it listens.
//
// It does not own: how chunks are read and verified (internal/agent), the
// frontends (internal/blockdev/...), the cache fleet (internal/cachefleet),
// image pointers (internal/catalog), or flags (cmd/lode binds them into
// Options, DaemonConfig, FillOptions and RunOptions).
package worker
