package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func convert(args []string) error {
	fs := flag.NewFlagSet("convert", flag.ExitOnError)
	dir := fs.String("layout", "", "OCI layout holding one image")
	dst := fs.String("dst", "", "image reference to push the eStargz image to (plain HTTP)")
	prio := fs.String("prioritized", "", "file of paths (one a line, access order) to put first, before a prefetch landmark")
	fs.Parse(args)
	var files []string
	if *prio != "" {
		b, err := os.ReadFile(*prio)
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				files = append(files, l)
			}
		}
	}
	p, err := layout.FromPath(*dir)
	if err != nil {
		return fmt.Errorf("layout %s: %w", *dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) == 0 {
		return fmt.Errorf("layout %s: no image (%v)", *dir, err)
	}
	src, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		return err
	}
	cfg, err := src.ConfigFile()
	if err != nil {
		return err
	}
	layers, err := src.Layers()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "esgz-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	c := cfg.DeepCopy()
	c.RootFS.DiffIDs = nil
	c.History = nil
	out, err := mutate.ConfigFile(empty.Image, c)
	if err != nil {
		return err
	}
	for i, l := range layers {
		add, err := esgzLayer(l, filepath.Join(tmp, strconv.Itoa(i)), files)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if out, err = mutate.Append(out, add); err != nil {
			return err
		}
	}
	ref, err := name.ParseReference(*dst, name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(ref, out)
}

// esgzLayer converts one layer with estargz.Build and annotates it with its
// TOC digest and uncompressed size, as the stargz snapshotter expects.
func esgzLayer(l v1.Layer, base string, files []string) (mutate.Addendum, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return mutate.Addendum{}, err
	}
	defer rc.Close()
	tf, err := os.Create(base + ".tar")
	if err != nil {
		return mutate.Addendum{}, err
	}
	defer tf.Close()
	n, err := io.Copy(tf, rc)
	if err != nil {
		return mutate.Addendum{}, err
	}
	var opts []estargz.Option
	if len(files) > 0 {
		var missed []string
		opts = append(opts, estargz.WithPrioritizedFiles(files), estargz.WithAllowPrioritizeNotFound(&missed))
		defer func() {
			if len(missed) > 0 {
				fmt.Fprintf(os.Stderr, "stargz convert: %d prioritized files not in the layer: %v\n", len(missed), missed)
			}
		}()
	}
	blob, err := estargz.Build(io.NewSectionReader(tf, 0, n), opts...)
	if err != nil {
		return mutate.Addendum{}, fmt.Errorf("estargz build: %w", err)
	}
	defer blob.Close()
	gz := base + ".esgz"
	f, err := os.Create(gz)
	if err != nil {
		return mutate.Addendum{}, err
	}
	w := bufio.NewWriter(f)
	if _, err := io.Copy(w, blob); err != nil {
		f.Close()
		return mutate.Addendum{}, err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return mutate.Addendum{}, err
	}
	if err := f.Close(); err != nil {
		return mutate.Addendum{}, err
	}
	layer, err := tarball.LayerFromFile(gz)
	if err != nil {
		return mutate.Addendum{}, err
	}
	return mutate.Addendum{Layer: layer, Annotations: map[string]string{
		estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
		estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(n, 10),
	}}, nil
}
