package snapshotter

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// The labels containerd's unpacker and CRI (or the Go client's
// pkg/snapshotters handler) put on an extraction Prepare.
const (
	LabelTargetRef      = "containerd.io/snapshot.ref"                 // the chain ID to commit as
	LabelImageRef       = "containerd.io/snapshot/cri.image-ref"       // the image reference being pulled
	LabelManifestDigest = "containerd.io/snapshot/cri.manifest-digest" // its manifest digest
	LabelLayerDigest    = "containerd.io/snapshot/cri.layer-digest"    // this layer's (compressed) digest
	LabelImageLayers    = "containerd.io/snapshot/cri.image-layers"    // this layer's digest and those above it, comma-separated
)

// lode's own labels on the snapshots it commits as remote.
const (
	labelKind     = "lode.dev/snapshot.kind" // kindRemote, kindRemoteLower or kindMaterialized; absent: local
	labelImage    = "lode.dev/image"         // tenant/name of the lode image
	labelSource   = "lode.dev/source"        // the manifest digest containerd asked for
	labelLayer    = "lode.dev/layer"         // the layer digest (to materialize)
	labelImageRef = "lode.dev/image-ref"     // the image reference (to materialize)
)

// The kinds of snapshots, as labelKind records them and Status reports them.
const (
	KindLocal        = "local"        // unpacked by containerd (fallback) or a container's writable layer
	KindRemote       = "remote"       // the top chain of a lode image: its files are the image's mount
	KindRemoteLower  = "remote-lower" // a lower chain of a lode image: no files of its own
	KindMaterialized = "materialized" // a remote-lower chain unpacked because an unknown image built on it
)

// maxLabel bounds any label value the parser accepts (containerd's own
// limit on a label is 4096 bytes, key and value).
const maxLabel = 4096

// Request is what an extraction Prepare's labels say about the layer.
type Request struct {
	Target         string          // chain ID to commit as; "" when not an extraction
	ImageRef       string          // "" when the client sent no CRI labels
	ManifestDigest digest.Digest   // "" when the client sent no CRI labels
	LayerDigest    digest.Digest   // "" when the client sent no CRI labels
	Layers         []digest.Digest // this layer and those above it (may be truncated by the client)
}

// Labeled reports whether the request names an image (CRI labels present).
func (r Request) Labeled() bool { return r.ManifestDigest != "" }

// Top reports whether the layer is the image's top layer.
func (r Request) Top() bool { return len(r.Layers) == 1 && r.Layers[0] == r.LayerDigest }

// ParseRequest reads the labels of a Prepare. Missing CRI labels are not
// an error (the pull then falls back); malformed ones are, wrapping
// errdefs.ErrInvalidArgument.
func ParseRequest(labels map[string]string) (Request, error) {
	var r Request
	bad := func(key, format string, args ...any) (Request, error) {
		return Request{}, fmt.Errorf("label %s: %s: %w", key, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	for _, k := range []string{LabelTargetRef, LabelImageRef, LabelManifestDigest, LabelLayerDigest, LabelImageLayers} {
		if len(labels[k]) > maxLabel {
			return bad(k, "%d bytes, at most %d", len(labels[k]), maxLabel)
		}
	}
	r.Target = labels[LabelTargetRef]
	if strings.ContainsAny(r.Target, "/\x00\n") {
		return bad(LabelTargetRef, "%q is not a snapshot name", r.Target)
	}
	md, ld, layers := labels[LabelManifestDigest], labels[LabelLayerDigest], labels[LabelImageLayers]
	if md == "" && ld == "" && layers == "" {
		r.ImageRef = labels[LabelImageRef]
		return r, nil
	}
	if r.Target == "" {
		return bad(LabelManifestDigest, "CRI labels without %s", LabelTargetRef)
	}
	var err error
	if r.ManifestDigest, err = digest.Parse(md); err != nil {
		return bad(LabelManifestDigest, "%q: %v", md, err)
	}
	if r.LayerDigest, err = digest.Parse(ld); err != nil {
		return bad(LabelLayerDigest, "%q: %v", ld, err)
	}
	if layers == "" {
		return bad(LabelImageLayers, "empty")
	}
	for _, s := range strings.Split(layers, ",") {
		d, err := digest.Parse(s)
		if err != nil {
			return bad(LabelImageLayers, "%q: %v", s, err)
		}
		r.Layers = append(r.Layers, d)
	}
	if r.Layers[0] != r.LayerDigest {
		return bad(LabelImageLayers, "starts with %s, not the layer %s", r.Layers[0], r.LayerDigest)
	}
	r.ImageRef = labels[LabelImageRef]
	if strings.ContainsAny(r.ImageRef, " \x00\n") {
		return bad(LabelImageRef, "%q is not an image reference", r.ImageRef)
	}
	return r, nil
}
