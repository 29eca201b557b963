package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/oci"
	"github.com/lode-dev/lode/internal/snapshotter"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/worker"
)

// containerd.go wires internal/snapshotter into `lode agent`: with
// --containerd-socket the agent also serves containerd's snapshots API
// (docs/containerd.md), mounting lode images through its own tiers.

type containerdOptions struct {
	socket   string
	root     string
	hostsDir string
}

func (o *containerdOptions) bind(f *pflag.FlagSet) {
	f.StringVar(&o.socket, "containerd-socket", "", `also serve containerd's snapshots API on this unix socket: containerd's [proxy_plugins] "lode" (type "snapshot") points here (docs/containerd.md)`)
	f.StringVar(&o.root, "containerd-root", "/var/lib/lode/containerd", "where the containerd snapshotter keeps its snapshots (overlayfs upper directories), metadata and image mount points")
	f.StringVar(&o.hostsDir, "containerd-hosts-dir", "/etc/containerd/certs.d", "registry host configuration (hosts.toml per host, as containerd's config_path) used to fetch the layers of a shared base an unknown image builds on")
}

// addSnapshotter registers the snapshotter as a service of d, if
// --containerd-socket is set.
func addSnapshotter(d *worker.Daemon, o containerdOptions, st store.Store, tenant string) {
	if o.socket == "" {
		return
	}
	r := snapshotter.NewRunner(snapshotter.Config{
		Root:   o.root,
		Images: &snapshotter.CatalogImages{Store: st, Tenant: tenant},
		Mounter: snapshotter.MounterFuncs{
			// Refuses an image whose manifest does not record the source containerd asked for.
			MountFunc: func(ctx context.Context, im snapshotter.Image, dir string) error {
				_, err := d.Mount(ctx, worker.MountRequest{Tenant: im.Tenant, Image: im.Name, Dir: dir, Source: im.Source.String()})
				return err
			},
			UnmountFunc: func(_ context.Context, dir string) error { return d.Unmount(dir) },
		},
		Layers:     snapshotter.RegistryLayers{HostsDir: o.hostsDir, Keychain: oci.Keychain("")},
		Log:        logger,
		Registerer: d.Registerer(),
	})
	d.AddService(worker.Service{Name: "containerd snapshotter", Socket: o.socket, Serve: r.Serve, Status: r.Status})
}
