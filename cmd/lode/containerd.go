package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/snapshotter"
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
	f.StringVar(&o.root, "containerd-root", "/var/lib/lode/containerd", "where the containerd snapshotter keeps its snapshots (overlayfs upper directories) and metadata")
	f.StringVar(&o.hostsDir, "containerd-hosts-dir", "/etc/containerd/certs.d", "registry host configuration (hosts.toml per host, as containerd's config_path) used to fetch the layers of a shared base an unknown image builds on")
}

// containerdService is the snapshotter the agent serves to containerd.
type containerdService struct {
	sn   *snapshotter.Snapshotter
	srv  *snapshotter.Server
	once sync.Once
}

// startContainerd opens the snapshotter and serves it, if --containerd-socket
// is set; it returns nil otherwise.
func (d *daemon) startContainerd(ctx context.Context, o containerdOptions) (*containerdService, error) {
	if o.socket == "" {
		return nil, nil
	}
	sn, err := snapshotter.New(ctx, snapshotter.Config{
		Root: o.root, Images: &catalogImages{d: d}, Mounter: daemonMounter{d: d},
		Layers: snapshotter.RegistryLayers{HostsDir: o.hostsDir}, Log: d.base, Registerer: d.reg,
	})
	if err != nil {
		return nil, err
	}
	srv, err := snapshotter.Serve(o.socket, sn)
	if err != nil {
		sn.Close()
		return nil, err
	}
	d.log.Info("serving containerd's snapshots API", slog.String("socket", o.socket), slog.String("root", o.root))
	return &containerdService{sn: sn, srv: srv}, nil
}

// stop finishes containerd's calls in flight and closes the snapshotter;
// the image mounts stay (the daemon unmounts them or hands them over).
func (c *containerdService) stop() {
	if c == nil {
		return
	}
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.srv.Stop(ctx)
		c.sn.Close()
	})
}

func (c *containerdService) status(ctx context.Context) []snapshotter.SnapshotStatus {
	if c == nil {
		return nil
	}
	st, _ := c.sn.Status(ctx)
	return st
}

// daemonMounter mounts images for the snapshotter as POST /v1/mounts does,
// after checking that the manifest was built from the image containerd
// asked for.
type daemonMounter struct{ d *daemon }

func (m daemonMounter) MountImage(ctx context.Context, im snapshotter.Image, dir string) error {
	d := m.d
	dir = filepath.Clean(dir)
	placeholder := &served{}
	if err := d.reserve(d.mounts, dir, placeholder); err != nil {
		return err
	}
	s, err := m.mount(ctx, im, dir)
	if err != nil {
		d.release(d.mounts, dir, placeholder)
		return err
	}
	d.mu.Lock()
	closing := d.closing
	if !closing {
		d.mounts[dir] = s
	}
	d.mu.Unlock()
	if closing {
		s.close()
		return errors.New("the agent is shutting down")
	}
	d.watchMount(s)
	d.log.Info("mounted for containerd", slog.String("image", s.name()), slog.String("dir", dir), slog.String("loop", s.mount.Loop()))
	return nil
}

func (m daemonMounter) mount(ctx context.Context, im snapshotter.Image, dir string) (*served, error) {
	d := m.d
	release, err := d.admit.Acquire(ctx, im.String())
	if err != nil {
		return nil, err
	}
	defer release()
	s, err := d.open(ctx, im.Tenant, im.Name)
	if err != nil {
		return nil, err
	}
	if s.m.SourceDigest != im.Source.String() {
		s.close()
		return nil, fmt.Errorf("image %s records source %s, containerd asked for %s: refusing to mount it", s.name(), s.m.SourceDigest, im.Source)
	}
	d.markStarting(s.im)
	s.dir = dir
	mo := fuse.MountOptions{StateDir: d.o.stateDir}
	mo.Log = d.base
	mnt, err := fuse.MountImage(ctx, dir, s.im, mo)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("mounting %s at %s: %w", s.name(), dir, err)
	}
	s.mount = mnt
	return s, nil
}

func (m daemonMounter) Unmount(ctx context.Context, dir string) error {
	d := m.d
	dir = filepath.Clean(dir)
	d.mu.Lock()
	s, ok := d.mounts[dir]
	if ok && s.mount != nil {
		delete(d.mounts, dir)
	}
	d.mu.Unlock()
	if !ok || s.mount == nil {
		return fmt.Errorf("%s is not mounted by this agent", dir)
	}
	return s.close()
}

// catalogImages finds lode images by the manifest digest of their source
// among the default tenant's images. It reads every image's manifest (through
// the resolver's cache) at most once per catalogScanTTL.
//
// TODO(#17): use the catalog's lookup by source manifest digest and by
// chain ID once the registry source records them.
type catalogImages struct {
	d *daemon

	mu      sync.Mutex
	scanned time.Time
	sources map[digest.Digest]snapshotter.Image
}

const catalogScanTTL = 2 * time.Second

func (c *catalogImages) BySource(ctx context.Context, dg digest.Digest) (snapshotter.Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if im, ok := c.sources[dg]; ok && time.Since(c.scanned) < catalogScanTTL {
		return im, nil
	}
	if time.Since(c.scanned) >= catalogScanTTL || c.sources == nil {
		if err := c.scan(ctx); err != nil {
			return snapshotter.Image{}, err
		}
	}
	if im, ok := c.sources[dg]; ok {
		return im, nil
	}
	return snapshotter.Image{}, fmt.Errorf("no image of tenant %s was built from manifest %s: %w", c.d.tenant, dg, snapshotter.ErrUnknownImage)
}

func (c *catalogImages) scan(ctx context.Context) error {
	tenant := c.d.tenant
	es, err := catalog.List(ctx, c.d.st, tenant, false)
	if err != nil {
		return fmt.Errorf("listing the images of tenant %s: %w", tenant, err)
	}
	src := map[digest.Digest]snapshotter.Image{}
	for _, e := range es {
		m, _, err := c.d.resolve.Resolve(ctx, tenant, e.Name)
		if err != nil {
			c.d.log.Warn("reading an image's manifest to match containerd's images", slog.String("image", tenant+"/"+e.Name), slog.Any("err", err))
			continue
		}
		d := digest.Digest(m.SourceDigest)
		if d.Validate() != nil {
			continue
		}
		src[d] = snapshotter.Image{Tenant: tenant, Name: e.Name, Source: d}
	}
	c.sources, c.scanned = src, time.Now()
	return nil
}

func (c *catalogImages) ByChainID(ctx context.Context, id digest.Digest) (snapshotter.Image, error) {
	return snapshotter.Image{}, fmt.Errorf("chain %s: lookups by chain ID need the registry source's layer records: %w", id, snapshotter.ErrUnknownImage)
}

// printSnapshots prints containerd's snapshots by kind, then each one that
// is not a plain local snapshot (remote, remote-lower, materialized).
func printSnapshots(out io.Writer, sns []snapshotter.SnapshotStatus) {
	if len(sns) == 0 {
		return
	}
	kinds := map[string]int{}
	for _, s := range sns {
		kinds[s.Kind]++
	}
	fmt.Fprintf(out, "containerd snapshots: %d remote, %d remote-lower, %d materialized, %d local\n",
		kinds[snapshotter.KindRemote], kinds[snapshotter.KindRemoteLower], kinds[snapshotter.KindMaterialized], kinds[snapshotter.KindLocal])
	for _, s := range sns {
		line := fmt.Sprintf("snapshot %s: %s %s", s.Name, s.State, s.Kind)
		if s.Image != "" {
			line += " image " + s.Image
		}
		if s.Mount != "" {
			line += " mounted at " + s.Mount
		}
		fmt.Fprintln(out, line)
	}
}
