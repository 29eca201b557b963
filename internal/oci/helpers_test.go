package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// te is one entry of a test tar. Type defaults from the name: "x/" is a directory, else a regular file.
type te struct {
	name   string
	typ    byte
	body   string
	link   string
	mode   int64
	xattrs map[string]string
	size   int64 // overrides len(body) in the header (to make truncated tars)
}

func (e te) header() *tar.Header {
	if e.typ == tar.TypeXGlobalHeader {
		return &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: map[string]string{"comment": "global"}, Format: tar.FormatPAX}
	}
	h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode,
		ModTime: time.Unix(1700000000, 0), Uid: 1000, Gid: 1000, Uname: "someone", Gname: "group",
		Format: tar.FormatPAX}
	if h.Typeflag == 0 {
		h.Typeflag = tar.TypeReg
		if strings.HasSuffix(e.name, "/") {
			h.Typeflag = tar.TypeDir
		}
	}
	if h.Mode == 0 {
		h.Mode = 0o644
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(e.body))
		if e.size != 0 {
			h.Size = e.size
		}
	}
	for k, v := range e.xattrs {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+k] = v
	}
	return h
}

// tarOf builds a tar from entries, with or without the end-of-archive marker.
func tarOf(t testing.TB, entries ...te) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		if err := tw.WriteHeader(e.header()); err != nil {
			t.Fatalf("WriteHeader(%q) = %v", e.name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("Write(%q) = %v", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// writeLayout writes an OCI layout (gzip layers, via ggcr) with the given layer tars, tagged "test",
// and returns the layout directory.
func writeLayout(t testing.TB, cfg v1.Config, layers ...[]byte) string {
	t.Helper()
	img := empty.Image
	for i, b := range layers {
		b := b
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatalf("LayerFromOpener(%d) = %v", i, err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	img, err := mutate.Config(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: "test"})); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeFile(t testing.TB, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func flatten(t testing.TB, source string, o FlattenOptions) ([]byte, FlattenStats, error) {
	t.Helper()
	ctx := context.Background()
	im, err := Open(ctx, source)
	if err != nil {
		t.Fatalf("Open(%s) = %v", source, err)
	}
	defer im.Close()
	var out bytes.Buffer
	st, err := Flatten(ctx, im, &out, o)
	checkOnce(t, source, o, out.Bytes(), st, err)
	checkInto(t, source, o, out.Bytes(), st, err)
	return out.Bytes(), st, err
}

// checkInto checks that FlattenInto through a tar.Writer writes what Flatten wrote.
func checkInto(t testing.TB, source string, o FlattenOptions, want []byte, wantStats FlattenStats, wantErr error) {
	t.Helper()
	ctx := context.Background()
	im, err := Open(ctx, source)
	if err != nil {
		t.Fatalf("Open(%s) = %v", source, err)
	}
	defer im.Close()
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	st, err := FlattenInto(ctx, im, tw, o)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("FlattenInto(%s) = %v, Flatten %v", source, err, wantErr)
	}
	if err != nil {
		return
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) || st != wantStats {
		t.Errorf("FlattenInto(%s) wrote %d bytes %+v, Flatten %d bytes %+v", source, out.Len(), st, len(want), wantStats)
	}
}

// checkOnce checks FlattenOnce against Flatten's result on the same source: it must write the same
// bytes and stats, or answer ErrTwoPasses; it never succeeds where Flatten fails.
func checkOnce(t testing.TB, source string, o FlattenOptions, want []byte, wantStats FlattenStats, wantErr error) {
	t.Helper()
	ctx := context.Background()
	im, err := Open(ctx, source)
	if err != nil {
		t.Fatalf("Open(%s) = %v", source, err)
	}
	defer im.Close()
	var out bytes.Buffer
	st, err := FlattenOnce(ctx, im, &out, o)
	switch {
	case errors.Is(err, ErrTwoPasses):
	case err != nil:
		t.Errorf("FlattenOnce(%s) = %v, want nil or ErrTwoPasses (Flatten: %v)", source, err, wantErr)
	case wantErr != nil:
		t.Errorf("FlattenOnce(%s) succeeded where Flatten failed: %v", source, wantErr)
	case !bytes.Equal(out.Bytes(), want) || st != wantStats:
		t.Errorf("FlattenOnce(%s) wrote %d bytes %+v, Flatten %d bytes %+v", source, out.Len(), st, len(want), wantStats)
	}
}

// listTar renders a tar as one line per entry:
//
//	D name mode | F name mode "content" | S name -> target | H name => target | C/B name major,minor | P name
func listTar(t testing.TB, b []byte) []string {
	t.Helper()
	var out []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading output tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading output tar %q: %v", h.Name, err)
		}
		var line string
		switch h.Typeflag {
		case tar.TypeDir:
			line = fmt.Sprintf("D %s %o", h.Name, h.Mode)
		case tar.TypeReg:
			line = fmt.Sprintf("F %s %o %q", h.Name, h.Mode, body)
		case tar.TypeSymlink:
			line = fmt.Sprintf("S %s -> %s", h.Name, h.Linkname)
		case tar.TypeLink:
			line = fmt.Sprintf("H %s => %s", h.Name, h.Linkname)
		case tar.TypeChar:
			line = fmt.Sprintf("c %s %d,%d", h.Name, h.Devmajor, h.Devminor)
		case tar.TypeBlock:
			line = fmt.Sprintf("b %s %d,%d", h.Name, h.Devmajor, h.Devminor)
		case tar.TypeFifo:
			line = fmt.Sprintf("P %s", h.Name)
		default:
			line = fmt.Sprintf("? %s %q", h.Name, h.Typeflag)
		}
		if len(h.PAXRecords) > 0 {
			var keys []string
			for k, v := range h.PAXRecords {
				if strings.HasPrefix(k, "SCHILY.xattr.") {
					keys = append(keys, strings.TrimPrefix(k, "SCHILY.xattr.")+"="+v)
				}
			}
			sort.Strings(keys)
			if len(keys) > 0 {
				line += " xattrs:" + strings.Join(keys, ",")
			}
		}
		out = append(out, line)
	}
}
