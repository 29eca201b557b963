package oci

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/lodetest"
)

// exportTar is shaped like `docker export` output: a populated /dev (device
// nodes, the pts and shm mount points, a FIFO), as many base images and
// debootstrap trees also carry.
func exportTar(t testing.TB) []byte {
	return tarOf(t,
		te{name: "./", mode: 0o755},
		te{name: "./bin/", mode: 0o755},
		te{name: "./bin/sh", body: "#!"},
		te{name: "./dev/", mode: 0o755},
		te{name: "./dev/console", typ: tar.TypeChar, mode: 0o600},
		te{name: "./dev/null", typ: tar.TypeChar, mode: 0o666},
		te{name: "./dev/full", typ: tar.TypeChar, mode: 0o666},
		te{name: "./dev/loop0", typ: tar.TypeBlock, mode: 0o660},
		te{name: "./dev/pts/", mode: 0o755},
		te{name: "./dev/shm/", mode: 0o1777},
		te{name: "./dev/initctl", typ: tar.TypeFifo, mode: 0o600},
		te{name: "./dev/stdin", typ: tar.TypeSymlink, link: "/proc/self/fd/0"},
	)
}

// TestDevicePolicy: with no flag, device nodes under /dev are dropped (and
// counted for the build's notice), everything else under /dev is kept; with
// AllowDevices they are kept. docs/decisions/20261203-device-nodes.md.
func TestDevicePolicy(t *testing.T) {
	src := "rootfs:" + writeFile(t, exportTar(t))
	common := []string{"D . 755", "D bin 755", `F bin/sh 644 "#!"`, "D dev 755"}
	tail := []string{"D dev/pts 755", "D dev/shm 1777", "P dev/initctl", "S dev/stdin -> /proc/self/fd/0"}
	devs := []string{"c dev/console 0,0", "c dev/null 0,0", "c dev/full 0,0", "b dev/loop0 0,0"}
	for _, tc := range []struct {
		name    string
		allow   bool
		want    []string
		dropped int
	}{
		{"default drops /dev nodes", false, append(append([]string{}, common...), tail...), 4},
		{"--allow-devices keeps them", true, append(append(append([]string{}, common...), devs...), tail...), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultFlattenOptions()
			o.AllowDevices = tc.allow
			out, st, err := flatten(t, src, o)
			if err != nil {
				t.Fatalf("Flatten = %v", err)
			}
			if d := cmp.Diff(tc.want, listTar(t, out)); d != "" {
				t.Errorf("Flatten output mismatch (-want +got):\n%s", d)
			}
			if st.DroppedDevices != tc.dropped {
				t.Errorf("DroppedDevices = %d, want %d", st.DroppedDevices, tc.dropped)
			}
		})
	}
}

// TestDebootstrapRootfsFlattens: a real Debian bookworm minbase + python3
// tree made by debootstrap (device nodes in /dev, setuid binaries, hard
// links, absolute symlinks) flattens with the default options: the 8 device
// nodes under /dev are dropped and nothing is refused. (The whole build of it
// is bench/registry.sh's image; internal/build tests the pipeline on a
// `docker export` tar.)
func TestDebootstrapRootfsFlattens(t *testing.T) {
	src := "rootfs:" + lodetest.DebianRootfs(t)
	im, err := Open(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	two := sha256.New()
	st, err := Flatten(t.Context(), im, two, DefaultFlattenOptions())
	if err != nil {
		t.Fatalf("Flatten(%s) = %v", src, err)
	}
	if st.DroppedDevices != 8 || st.Files < 5000 || st.Hardlinks == 0 {
		t.Errorf("Flatten(%s) = %+v, want 8 dropped device nodes, > 5000 files and some hard links", src, st)
	}
	// A tar written from a tree takes one pass (what lode build does first), to the same bytes.
	im2, err := Open(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer im2.Close()
	one := sha256.New()
	st2, err := FlattenOnce(t.Context(), im2, one, DefaultFlattenOptions())
	if err != nil {
		t.Fatalf("FlattenOnce(%s) = %v, want one pass", src, err)
	}
	if st2 != st || !bytes.Equal(one.Sum(nil), two.Sum(nil)) {
		t.Errorf("FlattenOnce(%s) wrote other bytes (%+v) than Flatten (%+v)", src, st2, st)
	}
	if im2.Digest() != im.Digest() {
		t.Errorf("digest learned in one pass %s, in two %s", im2.Digest(), im.Digest())
	}
}
