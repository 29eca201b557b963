package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/oci"
	"github.com/lode-dev/lode/internal/profile"
)

type buildOptions struct {
	noLearn      bool // --learn-profile=false: workers never learn the image's profile (internal/profile)
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
	force        bool
	startFiles   []string
	noStartSet   bool
	remote       oci.RemoteOptions
	timeout      time.Duration
}

// defaultBuildOptions are lode build's flag defaults, also what lode demo
// builds with (compress: build.DefaultCompression, TestBuildDefaults).
func defaultBuildOptions() buildOptions {
	return buildOptions{chunkSize: chunk.DefaultSize, compress: "zstd", align: build.DefaultAlign}
}

func newBuildCmd() *cobra.Command {
	o := defaultBuildOptions()
	learn := true
	cmd := &cobra.Command{
		Use:   "build SOURCE --name NAME",
		Short: "Build an image into deduplicated, encrypted chunks in the store",
		Long: `Build flattens an image, writes it as a deterministic ext4 filesystem, cuts it
into chunks, encrypts each convergently and uploads the chunks the store lacks,
then stores the image's sealed manifest under NAME for the tenant.

SOURCE is one of:
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
                              an image in a registry, with the credentials of
                              skopeo/podman login or docker login (--authfile,
                              $REGISTRY_AUTH_FILE, containers auth.json,
                              ~/.docker/config.json and its credential helpers)
  oci:DIR[:TAG]               an OCI image layout (skopeo copy … oci:DIR:TAG, umoci)
  docker-archive:FILE[:TAG]   a docker save tarball
  rootfs:FILE                 a tar of a root filesystem (gzip or zstd allowed)`,
		Example: `  lode keys create
  lode build docker://registry.example:5000/team/app:1.4 --name app
  lode build docker://127.0.0.1:5000/app:dev --insecure-registry 127.0.0.1:5000 --platform linux/arm64 --name app-arm
  skopeo copy docker-archive:app.tar oci:app:latest
  lode build oci:app:latest --name app
  lode build rootfs:rootfs.tar.gz --name base --tenant team-a --store s3://bucket/lode`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.noLearn = !learn
			return runBuild(cmd.Context(), o, args[0], stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "image name (required)")
	f.IntVar(&o.chunkSize, "chunk-size", o.chunkSize, "chunk size in bytes (multiple of 4096)")
	f.StringVar(&o.saltDomain, "salt-domain", "", "placement domain mixed into the convergent-encryption salt (images dedup only within one domain)")
	f.IntVar(&o.uploads, "uploads", 0, "concurrent seal+upload workers (default 4×CPUs)")
	f.StringVar(&o.tempDir, "tmp", "", "directory for the staged ext4 image (default $TMPDIR)")
	f.StringVar(&o.keepImage, "keep-image", "", "also write the built ext4 image to this path")
	f.BoolVar(&o.allowDevices, "allow-devices", false, "keep device nodes (by default those under /dev are dropped with a notice and others refused)")
	f.BoolVar(&o.force, "force", false, "rebuild a docker:// source even if NAME already holds an image of the same manifest digest (needed for --align/--align=false or --allow-devices to take effect then)")
	f.StringVar(&o.remote.Platform, "platform", "", "os/arch[/variant] to pick from an image index (default linux/"+runtime.GOARCH+")")
	f.StringVar(&o.remote.CAFile, "registry-ca", "", "PEM file of a CA to trust for registries, beside the system roots")
	f.StringSliceVar(&o.remote.Insecure, "insecure-registry", nil, "HOST[:PORT] of a registry that may be reached over plain HTTP (repeatable)")
	f.DurationVar(&o.remote.Timeout, "registry-timeout", 60*time.Second, "fail when a registry sends nothing for this long")
	f.IntVar(&o.remote.Jobs, "registry-jobs", 3, "layers downloaded at once")
	f.StringVar(&o.remote.AuthFile, "authfile", "", "credentials file (containers-auth.json, as skopeo login --authfile) tried first")
	f.BoolVar(&o.noSetuid, "no-setuid", false, "refuse setuid/setgid files")
	f.StringVar(&o.compress, "compress", o.compress, "compress each chunk before encryption: zstd or none (recorded in the manifest; none is the default of images built before 2026-12)")
	f.BoolVar(&o.align, "align", o.align, "chunk-aligned layout: start every file of at least one chunk on a chunk boundary, so identical large files give identical chunks wherever they sit (dedup survives a base layer file changing size or reordered layers); --align=false packs file data in stream order, the layout of images built before 2026-12")
	f.DurationVar(&o.timeout, "build-timeout", build.DefaultTimeout, "abort (and write no image pointer) a build that runs longer than this after choosing its root; must equal lode gc --build-timeout")
	f.StringSliceVar(&o.startFiles, "start-file", nil, "a program starts of the image run, beside its entrypoint: its ELF closure joins the start set prefetched at every start (repeatable)")
	f.BoolVar(&o.noStartSet, "no-start-set", false, "store no build-time start set (metadata + entrypoint's ELF closure) as the image's prefetch hints")
	f.BoolVar(&learn, "learn-profile", true, "let workers learn this image's startup profile from its first starts (false: they never record them; docs/operations.md)")
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
	comp, err := manifest.ParseCompression(o.compress)
	if err != nil {
		return fmt.Errorf("--compress: %w", err)
	}
	o.remote.Progress = build.NewPullProgress(stderr)
	bo := build.Options{
		Remote: o.remote, Force: o.force,
		Compression: comp,
		Source:      source, Tenant: global.tenant, Name: o.name,
		ChunkSize: o.chunkSize, SaltDomain: o.saltDomain, Uploads: o.uploads,
		TempDir: o.tempDir, KeepImage: o.keepImage, Flatten: fo,
		Log: logger, Timeout: o.timeout,
		StartFiles: o.startFiles, NoStartSet: o.noStartSet,
	}
	if o.align {
		bo.Ext4.Align = int64(o.chunkSize)
	}
	skip := ""
	if strings.HasPrefix(source, "docker://") {
		skip = "flatten" // the layer bars show it
	}
	if p := build.NewTermProgress(stderr, skip); p != nil {
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
	if o.noLearn {
		if err := profile.DisableLearning(ctx, st, res.Root, res.ManifestID); err != nil {
			return err
		}
	}
	if res.DroppedDevices > 0 && !res.Unchanged {
		fmt.Fprintf(stderr, "notice: dropped %d device nodes under /dev (container runtimes mount their own /dev; --allow-devices keeps them)\n", res.DroppedDevices)
	}
	build.WriteReport(out, res, st)
	return nil
}
