package build_test

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/store/file"
)

// dockerExportTar is shaped like `docker export` output: the root, a
// populated /dev (device nodes, mount points, the /dev/pts and /dev/shm
// directories), /etc with the files Docker injects, and a program.
func dockerExportTar(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: ".dockerenv", Typeflag: tar.TypeReg, Mode: 0o755},
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2},
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "dev/console", Typeflag: tar.TypeChar, Mode: 0o600, Devmajor: 5, Devminor: 1},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		{Name: "dev/pts/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "dev/shm/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "etc/hosts", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "etc/mtab", Typeflag: tar.TypeSymlink, Linkname: "/proc/mounts"},
		{Name: "proc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "sys/", Typeflag: tar.TypeDir, Mode: 0o755},
	} {
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("#!"))
		}
	}
	tw.Close()
	p := filepath.Join(t.TempDir(), "export.tar")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestWildImagesBuildWithoutFlags: images as users make them build with no
// flag: a `docker export` tar here; the real debootstrap rootfs (Debian
// bookworm minbase + python3, with device nodes in /dev) in
// internal/oci.TestDebootstrapRootfsFlattens (flattening is where anything
// would be refused; its whole build takes 30 s under -race) and, built
// whole, in bench/registry.sh. The device nodes under /dev are dropped and
// counted (docs/decisions/20261203-device-nodes.md).
func TestWildImagesBuildWithoutFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		source  func(t *testing.T) string
		dropped int
	}{
		{"docker export", func(t *testing.T) string { return "rootfs:" + dockerExportTar(t) }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.source(t)
			st, err := file.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			res := doBuild(t, st, newKeyring(t), build.Options{Source: src, Name: "wild"})
			if res.DroppedDevices != tc.dropped || res.Chunks == 0 {
				t.Errorf("Build(%s) = %d chunks, dropped %d device nodes; want %d dropped", src, res.Chunks, res.DroppedDevices, tc.dropped)
			}
		})
	}
}
