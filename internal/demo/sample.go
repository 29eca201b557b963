package demo

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Tag is the tag of the sample image in its layout.
const Tag = "sample"

// Options shape the sample image.
type Options struct {
	// PayloadBytes is the size of the unused payload layer (model weights,
	// say). Default 1 GiB.
	PayloadBytes int64
}

// epoch fixes every timestamp so the sample is the same on every run.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// hostTools are copied from the host into the base layer when present, with
// the libraries they load.
var hostTools = []string{"/usr/bin/dash", "/usr/bin/cat", "/usr/bin/ls", "/usr/bin/env", "/usr/bin/head",
	"/usr/bin/sha256sum", "/usr/bin/wc", "/usr/bin/uname", "/usr/bin/id", "/usr/bin/python3.11"}

// WriteSample writes the sample image as an OCI layout in dir and returns
// the build source naming it ("oci:DIR:sample"). An existing layout in dir is
// reused.
func WriteSample(ctx context.Context, dir string, o Options) (string, error) {
	src := "oci:" + dir + ":" + Tag
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		return src, nil
	}
	if o.PayloadBytes == 0 {
		o.PayloadBytes = 1 << 30
	}
	base, err := baseLayer(ctx)
	if err != nil {
		return "", err
	}
	app, err := layerOf(appFiles())
	if err != nil {
		return "", err
	}
	payload, err := payloadLayer(o.PayloadBytes)
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, base, app, payload)
	if err != nil {
		return "", fmt.Errorf("assembling sample image: %w", err)
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{"/bin/sh", "/app/start.sh"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from a lazily loaded image"},
		WorkingDir: "/app",
		User:       "app",
	})
	if err != nil {
		return "", fmt.Errorf("configuring sample image: %w", err)
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return "", fmt.Errorf("writing layout %s: %w", tmp, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": Tag})); err != nil {
		return "", fmt.Errorf("writing sample image to %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return src, nil
}

type file struct {
	hdr  tar.Header
	body []byte
}

func dir(name string) file {
	return file{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch}}
}

func reg(name string, mode int64, body []byte) file {
	return file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: epoch}, body: body}
}

func symlink(name, target string) file {
	return file{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch}}
}

// baseLayer copies a small working userland from the host.
func baseLayer(ctx context.Context) (v1.Layer, error) {
	fs := []file{
		dir("etc"), dir("tmp") /* fs[1] */, dir("usr"), dir("usr/bin"), dir("usr/lib"), dir("usr/lib64"), dir("proc"), dir("sys"),
		dir("dev"), dir("home"), dir("root"),
		symlink("bin", "usr/bin"), symlink("lib", "usr/lib"), symlink("lib64", "usr/lib64"),
		symlink("usr/bin/sh", "dash"),
		reg("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")),
		reg("etc/group", 0o644, []byte("root:x:0:\napp:x:1000:\n")),
		reg("etc/os-release", 0o644, []byte("PRETTY_NAME=\"lode sample image\"\nID=lode-sample\n")),
	}
	fs[1].hdr.Mode = 0o1777 // tmp is sticky and world-writable
	libs := map[string]bool{}
	var tools []string
	for _, t := range hostTools {
		if _, err := os.Stat(t); err == nil {
			tools = append(tools, t)
		}
	}
	if len(tools) == 0 {
		return nil, fmt.Errorf("building sample image: none of %v exist on this host", hostTools)
	}
	for _, t := range tools {
		ls, err := sharedLibs(ctx, t)
		if err != nil {
			return nil, err
		}
		for _, l := range ls {
			libs[l] = true
		}
	}
	added := map[string]bool{}
	var paths []string
	for l := range libs {
		paths = append(paths, l)
	}
	paths = append(paths, tools...)
	sort.Strings(paths)
	for _, p := range paths {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(canonical(p), "/")
		if added[name] {
			continue
		}
		b, err := os.ReadFile(real)
		if err != nil {
			return nil, fmt.Errorf("reading %s for the sample image: %w", real, err)
		}
		fs = append(fs, parents(name, added)...)
		fs = append(fs, reg(name, 0o755, b))
		added[name] = true
	}
	if _, err := os.Stat("/usr/bin/python3.11"); err == nil {
		fs = append(fs, symlink("usr/bin/python3", "python3.11"))
		py, err := treeFiles("/usr/lib/python3.11", added)
		if err != nil {
			return nil, err
		}
		fs = append(fs, py...)
	}
	return layerOf(fs)
}

// canonical maps /lib/… and /lib64/… to /usr/lib/… so the merged-/usr
// symlinks above resolve them.
func canonical(p string) string {
	for _, pre := range []string{"/lib/", "/lib64/", "/bin/"} {
		if strings.HasPrefix(p, pre) {
			return "/usr" + p
		}
	}
	return p
}

func parents(name string, added map[string]bool) []file {
	var out []file
	parts := strings.Split(name, "/")
	for i := 1; i < len(parts); i++ {
		d := strings.Join(parts[:i], "/")
		if !added[d] {
			added[d] = true
			out = append(out, dir(d))
		}
	}
	return out
}

// sharedLibs lists the libraries ldd says bin loads, including the loader.
func sharedLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, nil // static, or no ldd: nothing to add
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
			}
		}
	}
	return libs, nil
}

// treeFiles copies a host directory tree (regular files, dirs and symlinks),
// skipping caches, in lexical order.
func treeFiles(root string, added map[string]bool) ([]file, error) {
	var out []file
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil // unreadable parts of the host tree are skipped
		}
		if fi.Name() == "__pycache__" || fi.Name() == "test" || fi.Name() == "site-packages" || fi.Name() == "dist-packages" {
			if fi.IsDir() {
				return filepath.SkipDir
			}
		}
		name := strings.TrimPrefix(p, "/")
		switch {
		case fi.IsDir():
			out = append(out, parents(name+"/x", added)...)
		case fi.Mode()&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err == nil && !filepath.IsAbs(t) {
				out = append(out, symlink(name, t))
			}
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			out = append(out, reg(name, int64(fi.Mode().Perm()), b))
		}
		return nil
	})
	return out, err
}

func appFiles() []file {
	script := `#!/bin/sh
echo "$GREETING"
echo "running as $(id -u):$(id -g) in $(pwd) on $(uname -s)"
head -n 1 /etc/os-release
if [ -x /usr/bin/python3 ]; then
  python3 -c 'import json, platform; print(json.dumps({"python": platform.python_version()}))'
fi
ls -la /app
echo "payload present: $(ls -la /data/model.bin | wc -l) file(s), not read"
`
	return []file{
		dir("app"), dir("home/app"),
		reg("app/start.sh", 0o755, []byte(script)),
		reg("app/config.json", 0o644, []byte(`{"workers": 4, "model": "/data/model.bin"}`+"\n")),
	}
}

// payloadLayer is one large file of deterministic pseudo-random bytes (so it
// neither compresses nor dedups) that the start never reads.
func payloadLayer(n int64) (v1.Layer, error) {
	open := func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "data", Mode: 0o755, ModTime: epoch})
			if err == nil {
				err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "data/model.bin", Mode: 0o644, ModTime: epoch, Size: n})
			}
			if err == nil {
				_, err = io.CopyN(tw, rand.New(rand.NewSource(42)), n)
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}
	return tarball.LayerFromOpener(open, tarball.WithCompressionLevel(1))
}

func layerOf(fs []file) (v1.Layer, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range fs {
		h := f.hdr
		h.Size = int64(len(f.body))
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := b.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}
