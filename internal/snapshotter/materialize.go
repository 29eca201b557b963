package snapshotter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

// Layers fetches layer blobs from the registry an image was pulled from.
type Layers interface {
	// Open returns the (compressed) blob d of image ref's repository.
	Open(ctx context.Context, ref string, d digest.Digest) (io.ReadCloser, error)
}

// RegistryLayers fetches blobs with containerd's registry client,
// configured as containerd's CRI plugin is: per-host hosts.toml files under
// HostsDir (mirrors, plain HTTP, CAs), with credentials from Keychain.
type RegistryLayers struct {
	HostsDir string // e.g. /etc/containerd/certs.d; "" uses the default hosts
	// Keychain finds credentials per registry (lode build's chain:
	// oci.Keychain); nil: anonymous. It is asked at each fetch, so renewed
	// credentials are used without a restart.
	Keychain authn.Keychain
}

// Open implements Layers.
func (r RegistryLayers) Open(ctx context.Context, ref string, d digest.Digest) (io.ReadCloser, error) {
	opts := config.HostOptions{}
	if r.HostsDir != "" {
		opts.HostDir = config.HostDirFromRoot(r.HostsDir)
	}
	if r.Keychain != nil {
		opts.Credentials = r.credentials
	}
	res := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, opts)})
	f, err := res.Fetcher(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("fetching layer %s of %s: %w", d, ref, err)
	}
	fd, ok := f.(remotes.FetcherByDigest)
	if !ok {
		return nil, fmt.Errorf("fetching layer %s of %s: the registry client cannot fetch by digest", d, ref)
	}
	rc, _, err := fd.FetchByDigest(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("fetching layer %s of %s: %w", d, ref, err)
	}
	return rc, nil
}

// credentials answers containerd's registry client for host from the
// keychain: a username and password, or "" and an identity token.
func (r RegistryLayers) credentials(host string) (string, string, error) {
	reg, err := name.NewRegistry(host)
	if err != nil {
		return "", "", err
	}
	a, err := r.Keychain.Resolve(reg)
	if err != nil {
		return "", "", fmt.Errorf("finding credentials for %s: %w", host, err)
	}
	c, err := a.Authorization()
	if err != nil {
		return "", "", fmt.Errorf("credentials for %s: %w", host, err)
	}
	if c.IdentityToken != "" {
		return "", c.IdentityToken, nil
	}
	return c.Username, c.Password, nil
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
	// The blob goes to a file first and is verified before a byte of it
	// is unpacked.
	blob, err := s.fetchVerified(ctx, ref, layer)
	if err != nil {
		return fail(err)
	}
	defer os.Remove(blob.Name())
	defer blob.Close()
	dr, err := compression.DecompressStream(blob)
	if err != nil {
		return fail(err)
	}
	defer dr.Close()
	n, err := archive.Apply(ctx, fs, dr, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithParents(parents))
	if err != nil {
		return fail(err)
	}
	info.Labels[labelKind] = KindMaterialized
	if _, err := s.inner.Update(ctx, snapshots.Info{Name: info.Name, Labels: info.Labels}, "labels"); err != nil {
		return fail(err)
	}
	s.fallback.WithLabelValues("materialized").Inc()
	s.log.Warn("materialized a remote lower chain: an image lode does not know builds on it", slog.String("snapshot", info.Name),
		slog.String("image", ref), slog.String("layer", layer.String()), slog.Int64("bytes", n), slog.Duration("took", time.Since(start)))
	return nil
}

// fetchVerified downloads blob d of ref into a temporary file under the
// root and checks its digest; the file is positioned at its start.
func (s *Snapshotter) fetchVerified(ctx context.Context, ref string, d digest.Digest) (*os.File, error) {
	rc, err := s.cfg.Layers.Open(ctx, ref, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.CreateTemp(s.cfg.Root, "blob-")
	if err != nil {
		return nil, err
	}
	v := d.Verifier()
	if _, err := io.Copy(io.MultiWriter(f, v), rc); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	if !v.Verified() {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("the blob does not hash to %s", d)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}
