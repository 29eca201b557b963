package snapshotter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrUnknownImage means lode has no image for what containerd asks for.
var ErrUnknownImage = errors.New("not a lode image")

// Image is a lode image that stands for a containerd image.
type Image struct {
	Tenant, Name string
	// Source is the manifest digest of the image it was built from, as its
	// lode manifest records it. A Mounter refuses to mount a lode image
	// whose manifest records another.
	Source digest.Digest
}

func (im Image) String() string { return im.Tenant + "/" + im.Name }

// Images finds the lode image built from a containerd image.
type Images interface {
	// BySource returns the lode image built from the image whose manifest
	// has digest d, or an error wrapping ErrUnknownImage.
	BySource(ctx context.Context, d digest.Digest) (Image, error)
	// ByChainID returns the lode image whose layers' chain ID is id (its
	// top chain), or an error wrapping ErrUnknownImage.
	ByChainID(ctx context.Context, id digest.Digest) (Image, error)
}

// Mounter mounts lode images read-only; the worker daemon implements it
// (one mount per directory, served through its cache tiers).
type Mounter interface {
	// MountImage mounts im read-only at dir. It must refuse (and mount
	// nothing) when the image's manifest does not record im.Source.
	MountImage(ctx context.Context, im Image, dir string) error
	// Unmount releases the mount at dir.
	Unmount(ctx context.Context, dir string) error
}

// MounterFuncs is a Mounter made of two functions, as `lode agent` wires
// the worker daemon's Mount and Unmount.
type MounterFuncs struct {
	MountFunc   func(ctx context.Context, im Image, dir string) error
	UnmountFunc func(ctx context.Context, dir string) error
}

// MountImage calls f.MountFunc.
func (f MounterFuncs) MountImage(ctx context.Context, im Image, dir string) error {
	return f.MountFunc(ctx, im, dir)
}

// Unmount calls f.UnmountFunc.
func (f MounterFuncs) Unmount(ctx context.Context, dir string) error { return f.UnmountFunc(ctx, dir) }

// Config configures a Snapshotter.
type Config struct {
	// Root holds metadata.db, snapshots/ and mounts/. It must be on a
	// filesystem overlayfs accepts as upper (ext4, xfs with d_type).
	Root    string
	Images  Images
	Mounter Mounter
	// Layers fetches layer blobs to materialize a remote lower chain that
	// an unknown image builds on; nil makes such a pull fail with
	// errdefs.ErrFailedPrecondition.
	Layers Layers
	Log    *slog.Logger
	// Registerer takes the snapshotter's metrics; nil: not registered.
	Registerer prometheus.Registerer
}

// Snapshotter is containerd's overlayfs snapshotter with remote snapshots
// for lode images. It is safe for concurrent use.
type Snapshotter struct {
	cfg   Config
	log   *slog.Logger
	ms    *storage.MetaStore
	inner snapshots.Snapshotter

	mu   sync.Mutex
	tops map[string]*top // remote top chains by name
	byFS map[string]*top // and by their (empty) fs directory

	matMu sync.Mutex // one materialization at a time
	bg    sync.WaitGroup

	fallback *prometheus.CounterVec
	remote   *prometheus.CounterVec
	promoted prometheus.Counter
}

// top is the snapshot of a lode image's top chain.
type top struct {
	name string
	im   Image
	fs   string // the snapshot's own (empty) fs directory, as overlay names it
	dir  string // where the image is mounted

	mu      sync.Mutex
	mounted bool
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// New opens (or creates) the snapshotter's state under cfg.Root.
func New(ctx context.Context, cfg Config) (*Snapshotter, error) {
	if cfg.Root == "" || cfg.Images == nil || cfg.Mounter == nil {
		return nil, errors.New("snapshotter: Root, Images and Mounter are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Root, "mounts"), 0o700); err != nil {
		return nil, fmt.Errorf("creating snapshotter root %s: %w", cfg.Root, err)
	}
	ms, err := storage.NewMetaStore(filepath.Join(cfg.Root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("opening snapshot metadata in %s: %w", cfg.Root, err)
	}
	inner, err := overlay.NewSnapshotter(cfg.Root, overlay.WithMetaStore(ms), overlay.AsynchronousRemove)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("opening the overlay snapshotter in %s: %w", cfg.Root, err)
	}
	s := &Snapshotter{
		cfg: cfg, log: cfg.Log.With(slog.String("component", "snapshotter")), ms: ms, inner: inner,
		tops: map[string]*top{}, byFS: map[string]*top{},
		fallback: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_snapshotter_fallback_total",
			Help: "Images or layers that were downloaded and unpacked instead of served by lode, by reason (unknown_image: per image lode did not build, containerd unpacks it; no_labels: per layer, the client sent no CRI labels; lookup_error: per layer, the catalog could not be read; materialized: per chain lode had answered remotely that an image lode does not know builds on, fetched by the snapshotter).",
		}, []string{"reason"}),
		remote: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_snapshotter_remote_snapshots_total",
			Help: "Layers answered as remote snapshots (no blob downloaded), by kind (remote: an image's top chain; remote-lower: a chain below it).",
		}, []string{"kind"}),
		promoted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_snapshotter_promoted_total",
			Help: "Remote lower chains found to be the top chain of another lode image and served as its mount.",
		}),
	}
	for _, r := range []string{"unknown_image", "no_labels", "lookup_error", "materialized"} {
		s.fallback.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.fallback, s.remote, s.promoted,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "lode_snapshotter_image_mounts",
				Help: "Lode images mounted for containerd snapshots (one per image, shared by its containers).",
			}, func() float64 { return float64(s.mountCount()) })} {
			if err := cfg.Registerer.Register(c); err != nil {
				inner.Close()
				return nil, fmt.Errorf("registering snapshotter metrics: %w", err)
			}
		}
	}
	if err := s.load(ctx); err != nil {
		inner.Close()
		return nil, err
	}
	return s, nil
}

// load finds the remote top chains recorded in the metastore, and which of
// them are still mounted (a takeover hands the mounts over).
func (s *Snapshotter) load(ctx context.Context) error {
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Labels[labelKind] != KindRemote {
				return nil
			}
			t, err := s.topOf(ctx, info)
			if err != nil {
				return err
			}
			if ok, _ := mountinfo.Mounted(t.dir); ok {
				t.mounted = true
			}
			s.tops[t.name], s.byFS[t.fs] = t, t
			return nil
		})
	})
	if errdefs.IsNotFound(err) { // a new metastore has no buckets yet
		return nil
	}
	return err
}

// topOf builds the record of a remote top chain; ctx carries a transaction.
func (s *Snapshotter) topOf(ctx context.Context, info snapshots.Info) (*top, error) {
	id, _, _, err := storage.GetInfo(ctx, info.Name)
	if err != nil {
		return nil, err
	}
	tenant, name, _ := strings.Cut(info.Labels[labelImage], "/")
	sum := sha256.Sum256([]byte(info.Name))
	return &top{
		name: info.Name,
		im:   Image{Tenant: tenant, Name: name, Source: digest.Digest(info.Labels[labelSource])},
		fs:   filepath.Join(s.cfg.Root, "snapshots", id, "fs"),
		dir:  filepath.Join(s.cfg.Root, "mounts", hex.EncodeToString(sum[:16])),
	}, nil
}

func (s *Snapshotter) mountCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, t := range s.tops {
		t.mu.Lock()
		if t.mounted {
			n++
		}
		t.mu.Unlock()
	}
	return n
}

// Stat returns the info of the snapshot key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return s.inner.Stat(ctx, key)
}

// Update updates the labels of the snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return s.inner.Update(ctx, info, fieldpaths...)
}

// Usage returns the disk usage of the snapshot (a remote one uses none).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return s.inner.Usage(ctx, key)
}

// Walk walks the snapshots.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.inner.Walk(ctx, fn, filters...)
}

// Prepare creates an active snapshot, or, for a layer of a lode image,
// commits it as a remote snapshot and answers errdefs.ErrAlreadyExists.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	req, err := ParseRequest(base.Labels)
	if err != nil {
		return nil, fmt.Errorf("preparing snapshot %q: %w", key, err)
	}
	if req.Target != "" {
		if im, ok := s.lookup(ctx, key, req); ok {
			return nil, s.commitRemote(ctx, key, parent, req, im, base.Labels)
		}
	}
	if err := s.usable(ctx, parent); err != nil {
		return nil, err
	}
	ms, err := s.inner.Prepare(ctx, key, parent, opts...)
	if err != nil {
		return nil, err
	}
	return s.rewrite(ctx, key, ms)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if err := s.usable(ctx, parent); err != nil {
		return nil, err
	}
	ms, err := s.inner.View(ctx, key, parent, opts...)
	if err != nil {
		return nil, err
	}
	return s.rewrite(ctx, key, ms)
}

// Mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	ms, err := s.inner.Mounts(ctx, key)
	if err != nil {
		return nil, err
	}
	return s.rewrite(ctx, key, ms)
}

// Commit commits an active snapshot.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.inner.Commit(ctx, name, key, opts...)
}

// Remove removes a snapshot; the directories go at Cleanup, and the image
// mount of a remote top chain is released in the background.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if err := s.inner.Remove(ctx, key); err != nil {
		return err
	}
	s.mu.Lock()
	t := s.tops[key]
	if t != nil {
		delete(s.tops, key)
		delete(s.byFS, t.fs)
	}
	s.mu.Unlock()
	if t != nil {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			s.release(t)
		}()
	}
	return nil
}

// release unmounts a removed top chain's image and removes its directory.
func (s *Snapshotter) release(t *top) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ctx := context.Background()
	if t.mounted {
		if err := s.cfg.Mounter.Unmount(ctx, t.dir); err != nil {
			s.log.Error("releasing the image mount of a removed snapshot", slog.String("snapshot", t.name),
				slog.String("image", t.im.String()), slog.String("dir", t.dir), slog.Any("err", err))
			return
		}
		t.mounted = false
		s.log.Info("image mount released", slog.String("snapshot", t.name), slog.String("image", t.im.String()))
	}
	if err := os.Remove(t.dir); err != nil && !os.IsNotExist(err) {
		s.log.Warn("removing an image mount point", slog.String("dir", t.dir), slog.Any("err", err))
	}
}

// Cleanup removes the directories of removed snapshots and mount points
// no snapshot uses.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	s.bg.Wait()
	if c, ok := s.inner.(snapshots.Cleaner); ok {
		if err := c.Cleanup(ctx); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(filepath.Join(s.cfg.Root, "mounts"))
	if err != nil {
		return fmt.Errorf("cleaning up mount points: %w", err)
	}
	s.mu.Lock()
	used := map[string]bool{}
	for _, t := range s.tops {
		used[filepath.Base(t.dir)] = true
	}
	s.mu.Unlock()
	for _, e := range ents {
		p := filepath.Join(s.cfg.Root, "mounts", e.Name())
		if used[e.Name()] {
			continue
		}
		if ok, _ := mountinfo.Mounted(p); ok {
			if err := s.cfg.Mounter.Unmount(ctx, p); err != nil {
				s.log.Warn("unmounting a stale image mount", slog.String("dir", p), slog.Any("err", err))
				continue
			}
		}
		os.Remove(p)
	}
	return nil
}

// Close waits for background releases and closes the metastore. It does
// not unmount the images: the daemon unmounts or hands its mounts over.
func (s *Snapshotter) Close() error {
	s.bg.Wait()
	return s.inner.Close()
}

// lookup decides whether the extraction Prepare key is a layer of a lode
// image; every other answer is a fallback, logged and counted.
func (s *Snapshotter) lookup(ctx context.Context, key string, req Request) (Image, bool) {
	if !req.Labeled() {
		s.fallback.WithLabelValues("no_labels").Inc()
		s.log.Warn("layer without CRI image labels: containerd unpacks it (pull with the snapshot-label handler or through CRI to start lazily)",
			slog.String("snapshot", req.Target), slog.String("image_ref", req.ImageRef))
		return Image{}, false
	}
	im, err := s.cfg.Images.BySource(ctx, req.ManifestDigest)
	switch {
	case err == nil:
		return im, true
	case errors.Is(err, ErrUnknownImage):
		if req.Top() {
			s.fallback.WithLabelValues("unknown_image").Inc()
			s.log.Warn("image not built by lode: containerd downloads and unpacks its layers (lode build docker://REF to start it lazily)",
				slog.String("image", req.ImageRef), slog.String("manifest", req.ManifestDigest.String()))
		}
	default:
		s.fallback.WithLabelValues("lookup_error").Inc()
		s.log.Error("looking the image up in lode's catalog failed: containerd unpacks the layer",
			slog.String("image", req.ImageRef), slog.String("manifest", req.ManifestDigest.String()),
			slog.String("snapshot", req.Target), slog.Any("err", err))
	}
	return Image{}, false
}

// commitRemote commits req.Target as a remote snapshot of im on parent and
// returns the error containerd expects then: ErrAlreadyExists.
func (s *Snapshotter) commitRemote(ctx context.Context, key, parent string, req Request, im Image, base map[string]string) error {
	kind := KindRemoteLower
	if req.Top() {
		kind = KindRemote
	}
	labels := maps.Clone(base)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, map[string]string{
		labelKind: kind, labelImage: im.String(), labelSource: req.ManifestDigest.String(),
		labelLayer: req.LayerDigest.String(), labelImageRef: req.ImageRef,
	})
	if _, err := s.inner.Prepare(ctx, key, parent, snapshots.WithLabels(labels)); err != nil {
		return fmt.Errorf("preparing remote snapshot %q of image %s: %w", req.Target, im, err)
	}
	if err := s.inner.Commit(ctx, req.Target, key, snapshots.WithLabels(labels)); err != nil {
		if rerr := s.inner.Remove(ctx, key); rerr != nil {
			s.log.Warn("removing an uncommitted remote snapshot", slog.String("key", key), slog.Any("err", rerr))
		}
		if errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("target snapshot %q: %w", req.Target, errdefs.ErrAlreadyExists)
		}
		return fmt.Errorf("committing remote snapshot %q of image %s: %w", req.Target, im, err)
	}
	if kind == KindRemote {
		if err := s.addTop(ctx, req.Target); err != nil {
			return err
		}
	}
	s.remote.WithLabelValues(kind).Inc()
	s.log.Debug("remote snapshot", slog.String("snapshot", req.Target), slog.String("kind", kind),
		slog.String("image", im.String()), slog.String("layer", req.LayerDigest.String()))
	if kind == KindRemote {
		s.log.Info("image answered by lode: no layer is downloaded", slog.String("image", req.ImageRef),
			slog.String("lode_image", im.String()), slog.String("snapshot", req.Target))
	}
	return fmt.Errorf("target snapshot %q: %w", req.Target, errdefs.ErrAlreadyExists)
}

// addTop records the committed snapshot name as a remote top chain.
func (s *Snapshotter) addTop(ctx context.Context, name string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err := storage.GetInfo(ctx, name)
		if err != nil {
			return err
		}
		t, err := s.topOf(ctx, info)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.tops[name], s.byFS[t.fs] = t, t
		s.mu.Unlock()
		return nil
	})
}

// usable makes parent usable as the base of a new snapshot: a remote
// lower chain has no files, so it is promoted to the top chain of the lode
// image it is (Images.ByChainID), or else materialized.
func (s *Snapshotter) usable(ctx context.Context, parent string) error {
	if parent == "" {
		return nil
	}
	info, err := s.inner.Stat(ctx, parent)
	if err != nil {
		return err // NotFound: a missing parent
	}
	if info.Labels[labelKind] != KindRemoteLower {
		return nil
	}
	if im, err := s.cfg.Images.ByChainID(ctx, digest.Digest(parent)); err == nil {
		return s.promote(ctx, info, im)
	}
	return s.materialize(ctx, parent)
}

// promote turns the remote lower chain info into the remote top chain of
// im: its files are im's mount from now on.
func (s *Snapshotter) promote(ctx context.Context, info snapshots.Info, im Image) error {
	info.Labels[labelKind] = KindRemote
	info.Labels[labelImage] = im.String()
	info.Labels[labelSource] = im.Source.String()
	if _, err := s.inner.Update(ctx, snapshots.Info{Name: info.Name, Labels: info.Labels}, "labels"); err != nil {
		return fmt.Errorf("promoting snapshot %q to image %s: %w", info.Name, im, err)
	}
	s.promoted.Inc()
	s.log.Info("remote lower chain is the top of a lode image: served as its mount", slog.String("snapshot", info.Name), slog.String("image", im.String()))
	return s.addTop(ctx, info.Name)
}

// rewrite replaces, in the mounts of snapshot key, the (empty) directory
// of a remote top chain and everything below it by the image's mount.
func (s *Snapshotter) rewrite(ctx context.Context, key string, ms []mount.Mount) ([]mount.Mount, error) {
	for i, m := range ms {
		switch m.Type {
		case "bind":
			t := s.topAt(m.Source)
			if t == nil {
				continue
			}
			dir, err := s.mountTop(ctx, t)
			if err != nil {
				return nil, fmt.Errorf("snapshot %q: %w", key, err)
			}
			ms[i].Source = dir
			ms[i].Options = readOnly(m.Options)
		case "overlay":
			var lower []string
			li := -1
			upper := false
			for j, o := range m.Options {
				if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
					lower, li = strings.Split(v, ":"), j
				}
				if strings.HasPrefix(o, "upperdir=") {
					upper = true
				}
			}
			for j, d := range lower {
				t := s.topAt(d)
				if t == nil {
					continue
				}
				dir, err := s.mountTop(ctx, t)
				if err != nil {
					return nil, fmt.Errorf("snapshot %q: %w", key, err)
				}
				lower = append(lower[:j], dir)
				if !upper && len(lower) == 1 {
					// overlayfs needs two lower directories without an upper one.
					ms[i] = mount.Mount{Type: "bind", Source: dir, Options: []string{"ro", "rbind"}}
					break
				}
				opts := append([]string(nil), m.Options...)
				opts[li] = "lowerdir=" + strings.Join(lower, ":")
				ms[i].Options = opts
				break
			}
		}
	}
	return ms, nil
}

func readOnly(opts []string) []string {
	out := []string{"ro"}
	for _, o := range opts {
		if o != "rw" && o != "ro" {
			out = append(out, o)
		}
	}
	return out
}

func (s *Snapshotter) topAt(fs string) *top {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byFS[filepath.Clean(fs)]
}

// mountTop mounts t's image unless it is mounted, and returns where.
func (s *Snapshotter) mountTop(ctx context.Context, t *top) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mounted {
		return t.dir, nil
	}
	if err := os.MkdirAll(t.dir, 0o755); err != nil {
		return "", fmt.Errorf("creating mount point for image %s: %w", t.im, err)
	}
	if ok, _ := mountinfo.Mounted(t.dir); ok {
		t.mounted = true // kept across a restart of the daemon (takeover)
		return t.dir, nil
	}
	if err := s.cfg.Mounter.MountImage(ctx, t.im, t.dir); err != nil {
		return "", fmt.Errorf("mounting lode image %s (source %s) for snapshot %q: %w", t.im, t.im.Source, t.name, err)
	}
	t.mounted = true
	s.log.Info("image mounted for containerd", slog.String("image", t.im.String()), slog.String("snapshot", t.name), slog.String("dir", t.dir))
	return t.dir, nil
}
