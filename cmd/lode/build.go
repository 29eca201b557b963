package main

import (
	"context"
	"fmt"
	"io"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/oci"
)

type buildOptions struct {
	name         string
	chunkSize    int
	saltDomain   string
	uploads      int
	tempDir      string
	keepImage    string
	allowDevices bool
	noSetuid     bool
	compress     string
	align        bool
}

func newBuildCmd() *cobra.Command {
	var o buildOptions
	cmd := &cobra.Command{
		Use:   "build SOURCE --name NAME",
		Short: "Build an image into deduplicated, encrypted chunks in the store",
		Long: `Build flattens an image, writes it as a deterministic ext4 filesystem, cuts it
into chunks, encrypts each convergently and uploads the chunks the store lacks,
then stores the image's sealed manifest under NAME for the tenant.

SOURCE is one of:
  oci:DIR[:TAG]               an OCI image layout (skopeo copy … oci:DIR:TAG, umoci)
  docker-archive:FILE[:TAG]   a docker save tarball
  rootfs:FILE                 a tar of a root filesystem (gzip or zstd allowed)`,
		Example: `  lode keys create
  skopeo copy docker-archive:app.tar oci:app:latest
  lode build oci:app:latest --name app
  lode build rootfs:rootfs.tar.gz --name base --tenant team-a --store s3://bucket/lode`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBuild(cmd.Context(), o, args[0], stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "image name (required)")
	f.IntVar(&o.chunkSize, "chunk-size", chunk.DefaultSize, "chunk size in bytes (multiple of 4096)")
	f.StringVar(&o.saltDomain, "salt-domain", "", "placement domain mixed into the convergent-encryption salt (images dedup only within one domain)")
	f.IntVar(&o.uploads, "uploads", 0, "concurrent seal+upload workers (default 4×CPUs)")
	f.StringVar(&o.tempDir, "tmp", "", "directory for the staged ext4 image (default $TMPDIR)")
	f.StringVar(&o.keepImage, "keep-image", "", "also write the built ext4 image to this path")
	f.BoolVar(&o.allowDevices, "allow-devices", false, "allow device nodes in the image")
	f.BoolVar(&o.noSetuid, "no-setuid", false, "refuse setuid/setgid files")
	f.StringVar(&o.compress, "compress", "none", "compress each chunk before encryption: none or zstd (recorded in the manifest)")
	f.BoolVar(&o.align, "align", false, "chunk-aligned layout: start every file of at least one chunk on a chunk boundary, so identical large files give identical chunks wherever they sit (more dedup when a base layer changes or layers are reordered)")
	cmd.MarkFlagRequired("name")
	return cmd
}

func runBuild(ctx context.Context, o buildOptions, source string, out io.Writer) error {
	kr, err := openKeyring()
	if err != nil {
		return err
	}
	st, err := openStore(ctx)
	if err != nil {
		return err
	}
	fo := oci.DefaultFlattenOptions()
	fo.AllowDevices = o.allowDevices
	if o.noSetuid {
		fo.AllowSetuid = false
	}
	comp, err := compressionFlag(o.compress) // profile.go
	if err != nil {
		return err
	}
	bo := build.Options{
		Compression: comp,
		Source:      source, Tenant: global.tenant, Name: o.name,
		ChunkSize: o.chunkSize, SaltDomain: o.saltDomain, Uploads: o.uploads,
		TempDir: o.tempDir, KeepImage: o.keepImage, Flatten: fo,
		Log: logger,
	}
	if o.align {
		bo.Ext4.Align = int64(o.chunkSize)
	}
	if p := newProgress(stderr); p != nil {
		bo.Progress = p
		defer p.Finish()
	}
	secret, err := kr.BuilderSecret()
	if err != nil {
		return err
	}
	res, err := build.Build(ctx, st, kr, secret, bo)
	if err != nil {
		return fmt.Errorf("building %s from %s: %w", o.name, source, err)
	}
	secs := res.Duration.Seconds()
	fmt.Fprintf(out, "built %s/%s: %s in, %s image, %d chunks (%d holes, %d new, %d deduplicated, %.1f%% shared), %s uploaded, %.2fs, %.0f MB/s\n",
		res.Tenant, res.Name, humanize.IBytes(uint64(res.InputBytes)), humanize.IBytes(uint64(res.ImageSize)),
		res.Chunks, res.Holes, res.New, res.Dedup, 100*res.SharedShare(), humanize.IBytes(uint64(res.NewBytes)),
		secs, float64(res.ImageSize)/1e6/secs)
	fmt.Fprintf(out, "root %s, manifest %s, store %s\n", res.Root, res.ManifestID, st)
	return nil
}
