package snapshotter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layers fetches layer blobs from the registry an image was pulled from.
type Layers interface {
	// Open returns the (compressed) blob d of image ref's repository.
	Open(ctx context.Context, ref string, d digest.Digest) (io.ReadCloser, error)
}

// RegistryLayers fetches blobs with containerd's registry client,
// configured as containerd's CRI plugin is: per-host hosts.toml files under
// HostsDir (mirrors, plain HTTP, CAs). Credentials are not read.
type RegistryLayers struct {
	HostsDir string // e.g. /etc/containerd/certs.d; "" uses the default hosts
}

// Open implements Layers.
func (r RegistryLayers) Open(ctx context.Context, ref string, d digest.Digest) (io.ReadCloser, error) {
	opts := config.HostOptions{}
	if r.HostsDir != "" {
		opts.HostDir = config.HostDirFromRoot(r.HostsDir)
	}
	res := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, opts)})
	f, err := res.Fetcher(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("fetching layer %s of %s: %w", d, ref, err)
	}
	rc, err := f.Fetch(ctx, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d})
	if err != nil {
		return nil, fmt.Errorf("fetching layer %s of %s: %w", d, ref, err)
	}
	return rc, nil
}

// materialize unpacks the remote lower chain name, and the remote lower
// chains below it, from their layers in the registry, so that a snapshot
// can build on its files.
func (s *Snapshotter) materialize(ctx context.Context, name string) error {
	s.matMu.Lock()
	defer s.matMu.Unlock()
	var chain []snapshots.Info
	for n := name; n != ""; {
		info, err := s.inner.Stat(ctx, n)
		if err != nil {
			return fmt.Errorf("materializing snapshot %q: %w", name, err)
		}
		if info.Labels[labelKind] != KindRemoteLower {
			break
		}
		chain = append(chain, info)
		n = info.Parent
	}
	for i := len(chain) - 1; i >= 0; i-- {
		if err := s.materializeOne(ctx, chain[i]); err != nil {
			return err
		}
	}
	return nil
}

// materializeOne applies info's layer into its (empty) directory, on top of
// its parent's files.
func (s *Snapshotter) materializeOne(ctx context.Context, info snapshots.Info) (err error) {
	ref, layer := info.Labels[labelImageRef], digest.Digest(info.Labels[labelLayer])
	fail := func(err error) error {
		return fmt.Errorf("materializing snapshot %q (layer %s of %s) for an image lode does not know: %w", info.Name, layer, ref, err)
	}
	if s.cfg.Layers == nil || ref == "" || layer.Validate() != nil {
		return fail(fmt.Errorf("no registry to fetch it from: %w", errdefs.ErrFailedPrecondition))
	}
	start := time.Now()
	var fs string
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, info.Name)
		fs = filepath.Join(s.cfg.Root, "snapshots", id, "fs")
		return err
	}); err != nil {
		return fail(err)
	}
	var parents []string
	if info.Parent != "" {
		key := "lode-materialize-" + info.Name
		ms, err := s.inner.View(ctx, key, info.Parent)
		if err != nil {
			return fail(err)
		}
		defer func() {
			if rerr := s.inner.Remove(ctx, key); rerr != nil && err == nil {
				err = fail(rerr)
			}
		}()
		if ms, err = s.rewrite(ctx, key, ms); err != nil {
			return fail(err)
		}
		for _, m := range ms {
			if m.Type == "bind" {
				parents = append(parents, m.Source)
			}
			for _, o := range m.Options {
				if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
					parents = append(parents, strings.Split(v, ":")...)
				}
			}
		}
	}
	rc, err := s.cfg.Layers.Open(ctx, ref, layer)
	if err != nil {
		return fail(err)
	}
	defer rc.Close()
	v := layer.Verifier()
	dr, err := compression.DecompressStream(io.TeeReader(rc, v))
	if err != nil {
		return fail(err)
	}
	defer dr.Close()
	n, err := archive.Apply(ctx, fs, dr, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithParents(parents))
	if err != nil {
		return fail(err)
	}
	if _, err := io.Copy(io.Discard, dr); err != nil { // the rest of the blob, for the digest
		return fail(err)
	}
	if !v.Verified() {
		return fail(fmt.Errorf("the blob does not hash to %s", layer))
	}
	info.Labels[labelKind] = KindMaterialized
	if _, err := s.inner.Update(ctx, snapshots.Info{Name: info.Name, Labels: info.Labels}, "labels"); err != nil {
		return fail(err)
	}
	s.materialized.Inc()
	s.log.Warn("materialized a remote lower chain: an image lode does not know builds on it", slog.String("snapshot", info.Name),
		slog.String("image", ref), slog.String("layer", layer.String()), slog.Int64("bytes", n), slog.Duration("took", time.Since(start)))
	return nil
}
