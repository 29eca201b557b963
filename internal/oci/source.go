package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// refNameAnnotation names an image in an OCI layout's index (what skopeo and umoci write for TAG).
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Config is the part of an image's OCI config that lode keeps to start the container.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
}

// Image is an opened container image: its config and its layers, base layer first.
// It reads layer bytes only in Flatten. An Image may be flattened more than once, but not concurrently.
type Image struct {
	source string
	digest string
	config Config
	layers []*layer

	// Source record (docker:// and oci: sources; see Source).
	remote      bool
	sourceRef   string
	indexDigest string
	diffIDs     []string
	closer      interface{ Close() } // stops downloads (docker://)
}

// Source says where an image came from, as the manifest records it.
type Source struct {
	Ref         string   // "docker://host/repo:tag" (canonical) or the source string given to Open
	Digest      string   // Image.Digest
	IndexDigest string   // the index the image was picked from by platform; "" if none
	DiffIDs     []string // uncompressed layer digests, base first; nil for rootfs
	Remote      bool     // read from a registry (docker://)
}

// Source returns the image's source record.
func (im *Image) Source() Source {
	ref := im.sourceRef
	if ref == "" {
		ref = im.source
	}
	return Source{Ref: ref, Digest: im.digest, IndexDigest: im.indexDigest, DiffIDs: im.diffIDs, Remote: im.remote}
}

// Pulled returns the compressed bytes read from the registry so far
// (docker:// sources; 0 otherwise).
func (im *Image) Pulled() int64 {
	if p, ok := im.closer.(*prefetcher); ok {
		return p.pulled.Load()
	}
	return 0
}

// Config returns the image's config (empty for a rootfs tar).
func (im *Image) Config() Config { return im.config }

// Digest returns "sha256:…" of the image manifest (OCI layout), of the image config (docker-archive: the
// image ID, because a docker-archive holds no manifest and computing one means compressing every layer),
// or of the file (rootfs: known once Flatten has read it; "" before).
func (im *Image) Digest() string { return im.digest }

// Layers returns the number of layers.
func (im *Image) Layers() int { return len(im.layers) }

// String returns the source string Open was given.
func (im *Image) String() string { return im.source }

// Close releases the image: for a docker:// source it stops downloads that
// are still running and drops their spooled bytes. Other sources hold no open
// files between calls.
func (im *Image) Close() error {
	if im.closer != nil {
		im.closer.Close()
	}
	return nil
}

// Open opens an image source:
//
//	oci:DIR[:TAG]               an OCI image layout directory (skopeo copy … oci:DIR:TAG, umoci)
//	docker-archive:FILE[:TAG]   a `docker save` tarball; TAG is a reference such as busybox:latest
//	rootfs:FILE                 a tar of a root filesystem, plain, gzip or zstd (detected by magic bytes)
//	docker://HOST/REPO[:TAG|@DIGEST]  an image in a registry (OpenWith's RemoteOptions; here the defaults)
//
// DIR or FILE may contain ':': if the whole string after the transport names an existing path, it has no
// TAG; otherwise the longest prefix (cut at a ':') that names an existing path is DIR/FILE and the rest is TAG.
// Open reads and verifies manifests and config, not layers.
func Open(ctx context.Context, source string) (*Image, error) {
	return OpenWith(ctx, source, RemoteOptions{})
}

// OpenWith is Open with options for docker:// sources. For those it reads
// the manifest (through an index by platform) and the config, not layers:
// layers download while Flatten reads them (remote_fetch.go).
func OpenWith(ctx context.Context, source string, ro RemoteOptions) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	transport, rest, ok := strings.Cut(source, ":")
	if !ok || rest == "" {
		return nil, fmt.Errorf("opening image %q: %w: want docker://REF, oci:DIR[:TAG], docker-archive:FILE[:TAG] or rootfs:FILE", source, ErrUnsupported)
	}
	var (
		im  *Image
		err error
	)
	switch transport {
	case "docker":
		im, err = openRemote(ctx, source, ro)
	case "oci":
		dir, tag := splitPathTag(rest)
		im, err = openLayout(dir, tag)
	case "docker-archive":
		file, tag := splitPathTag(rest)
		im, err = openDockerArchive(file, tag)
	case "rootfs":
		im, err = openRootfs(ctx, rest)
	default:
		err = fmt.Errorf("%w: unknown transport %q", ErrUnsupported, transport)
	}
	if err != nil {
		return nil, fmt.Errorf("opening image %q: %w", source, err)
	}
	im.source = source
	return im, nil
}

// splitPathTag splits "PATH[:TAG]" as Open documents.
func splitPathTag(s string) (path, tag string) {
	if _, err := os.Stat(s); err == nil {
		return s, ""
	}
	for i := strings.LastIndexByte(s, ':'); i > 0; i = strings.LastIndexByte(s[:i], ':') {
		if _, err := os.Stat(s[:i]); err == nil {
			return s[:i], s[i+1:]
		}
	}
	return s, "" // let opening it report that it does not exist
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// verifyBlob checks that b hashes to want, a digest string.
func verifyBlob(what string, b []byte, want v1.Hash) error {
	h, err := newHash(want.String())
	if err != nil {
		return err
	}
	h.Write(b)
	if got := digestString(want.String(), h); got != want.String() {
		return fmt.Errorf("%w: %s %s: content has digest %s", ErrCorrupt, what, want, got)
	}
	return nil
}

func openLayout(dir, tag string) (*Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout index %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%w: parsing OCI layout index %s: %v", ErrCorrupt, dir, err)
	}
	var desc *v1.Descriptor
	indexDigest := ""
	if tag != "" {
		for i := range im.Manifests {
			if im.Manifests[i].Annotations[refNameAnnotation] == tag {
				desc = &im.Manifests[i]
				break
			}
		}
		if desc == nil {
			return nil, fmt.Errorf("tag %q not in OCI layout %s (has %s)", tag, dir, layoutTags(im))
		}
	} else {
		if len(im.Manifests) != 1 {
			return nil, fmt.Errorf("OCI layout %s holds %d manifests, name one by tag (has %s)", dir, len(im.Manifests), layoutTags(im))
		}
		desc = &im.Manifests[0]
	}
	if desc.MediaType.IsIndex() {
		child, err := idx.ImageIndex(desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading image index %s: %w", desc.Digest, err)
		}
		raw, err := child.RawManifest()
		if err != nil {
			return nil, fmt.Errorf("reading image index %s: %w", desc.Digest, err)
		}
		if err := verifyBlob("image index", raw, desc.Digest); err != nil {
			return nil, err
		}
		cm, err := child.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("%w: parsing image index %s: %v", ErrCorrupt, desc.Digest, err)
		}
		indexDigest = desc.Digest.String()
		idx, desc = child, nil
		for i := range cm.Manifests {
			m := &cm.Manifests[i]
			if m.MediaType.IsImage() && m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
				desc = m
				break
			}
		}
		if desc == nil {
			return nil, fmt.Errorf("%w: image index %s has no linux/%s image", ErrUnsupported, cm.MediaType, runtime.GOARCH)
		}
	}
	if !desc.MediaType.IsImage() {
		return nil, fmt.Errorf("%w: manifest %s has media type %s", ErrUnsupported, desc.Digest, desc.MediaType)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("reading image manifest %s: %w", desc.Digest, err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading image manifest %s: %w", desc.Digest, err)
	}
	if err := verifyBlob("image manifest", raw, desc.Digest); err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%w: parsing image manifest %s: %v", ErrCorrupt, desc.Digest, err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config %s: %w", m.Config.Digest, err)
	}
	if err := verifyBlob("image config", rawCfg, m.Config.Digest); err != nil {
		return nil, err
	}
	out := &Image{digest: desc.Digest.String(), indexDigest: indexDigest}
	if err := out.setConfig(img); err != nil {
		return nil, err
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("listing layers of %s: %w", desc.Digest, err)
	}
	// The diff IDs come from the (verified) config: asking ggcr's layer for
	// its DiffID decompresses the whole blob once more just to hash it, and
	// layerStream hashes the uncompressed stream on every read anyway.
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%w: parsing image config %s: %v", ErrCorrupt, m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(ls) {
		return nil, fmt.Errorf("%w: image config %s lists %d diff IDs for %d layers", ErrCorrupt, m.Config.Digest, len(cfg.RootFS.DiffIDs), len(ls))
	}
	for i, l := range ls {
		d, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("reading layer %d digest: %w", i, err)
		}
		diff := cfg.RootFS.DiffIDs[i]
		out.diffIDs = append(out.diffIDs, diff.String())
		out.layers = append(out.layers, &layer{
			index: i, digest: d.String(), wantRaw: d.String(), wantDiff: diff.String(),
			open: l.Compressed, // the blob file itself for a layout; layerStream decompresses and hashes
		})
	}
	return out, nil
}

func layoutTags(im *v1.IndexManifest) string {
	var tags []string
	for _, m := range im.Manifests {
		if t := m.Annotations[refNameAnnotation]; t != "" {
			tags = append(tags, t)
		}
	}
	if len(tags) == 0 {
		return "no tags"
	}
	return strings.Join(tags, ", ")
}

func openDockerArchive(file, tag string) (*Image, error) {
	var t *name.Tag
	if tag != "" {
		nt, err := name.NewTag(tag)
		if err != nil {
			return nil, fmt.Errorf("parsing tag %q: %w", tag, err)
		}
		t = &nt
	}
	if _, err := os.Stat(file); err != nil {
		return nil, err
	}
	img, err := tarball.ImageFromPath(file, t)
	if err != nil {
		return nil, fmt.Errorf("reading docker-archive %s: %w", file, err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}
	out := &Image{digest: sha256Digest(rawCfg)}
	if err := out.setConfig(img); err != nil {
		return nil, err
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("listing layers: %w", err)
	}
	for i, l := range ls {
		diff, err := l.DiffID()
		if err != nil {
			return nil, fmt.Errorf("%w: reading diff ID of layer %d: %v", ErrCorrupt, i, err)
		}
		out.diffIDs = append(out.diffIDs, diff.String())
		// ggcr's Uncompressed is the layer file itself for a classic docker save (and decompresses
		// otherwise); its Compressed would gzip uncompressed layers on the fly. Check the diff ID.
		out.layers = append(out.layers, &layer{
			index: i, digest: diff.String(), wantRaw: diff.String(), open: l.Uncompressed,
		})
	}
	return out, nil
}

func (im *Image) setConfig(img v1.Image) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("%w: parsing image config: %v", ErrCorrupt, err)
	}
	c := cf.Config
	im.config = Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}
	return nil
}

// openRootfs opens a plain tar of a root filesystem as a one-layer image with an empty config.
// Its digest is the file's SHA-256: Flatten's first pass over the file computes it (until then Digest
// returns ""), and every later read is checked against it. Hashing the file here instead would read
// and hash it once more, the most of a build's work that cannot run alongside anything else.
func openRootfs(ctx context.Context, file string) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: rootfs %s is not a regular file", ErrUnsupported, file)
	}
	im := &Image{}
	im.layers = []*layer{{
		index:    0,
		learnRaw: func(d string) { im.digest = d },
		open:     func() (io.ReadCloser, error) { return os.Open(file) },
	}}
	return im, nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
