package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"time"

	"github.com/google/go-cmp/cmp"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// determinismLayers has hard links that must move, sub-second times, xattrs, whiteouts and an opaque dir.
func determinismLayout(t testing.TB) string {
	ns := te{name: "f", body: strings.Repeat("data", 1000)}
	return writeLayout(t, v1.Config{},
		tarOf(t, te{name: "./"}, te{name: "d/"}, ns, te{name: "h", typ: '1', link: "f"}, te{name: "h2", typ: '1', link: "f"},
			te{name: "d/x", body: "x", xattrs: map[string]string{"user.a": "1", "user.b": "2", "trusted.c": "3"}}),
		tarOf(t, te{name: ".wh.f"}, te{name: "d/"}, te{name: "d/.wh..wh..opq"}, te{name: "d/y", body: "y"}, te{name: "z", body: "z"}),
	)
}

func digestOf(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestDeterminism flattens the same image twice here and once in a child process with another time zone
// and umask: the bytes must be identical.
func TestDeterminism(t *testing.T) {
	dir := determinismLayout(t)
	a, _, err := flatten(t, "oci:"+dir, DefaultFlattenOptions())
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := flatten(t, "oci:"+dir, DefaultFlattenOptions())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`D . 755`, `D d 755`, `F h 644 "` + strings.Repeat("data", 1000) + `"`, `H h2 => h`, `F d/y 644 "y"`, `F z 644 "z"`}
	if diff := cmp.Diff(want, listTar(t, a)); diff != "" {
		t.Errorf("flattened (-want +got):\n%s", diff)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("two flattens differ: %s vs %s", digestOf(a), digestOf(b))
	}
	outFile := filepath.Join(t.TempDir(), "child.tar")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TZ=Asia/Tokyo", "LODE_OCI_DETERMINISM_DIR="+dir, "LODE_OCI_DETERMINISM_OUT="+outFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	c, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, c) {
		t.Errorf("flatten under TZ=Asia/Tokyo, umask 077 differs: %s vs %s", digestOf(a), digestOf(c))
	}
}

// TestMain runs the determinism child when TestDeterminism starts this binary with its environment.
func TestMain(m *testing.M) {
	if dir := os.Getenv("LODE_OCI_DETERMINISM_DIR"); dir != "" {
		if err := determinismChild(dir, os.Getenv("LODE_OCI_DETERMINISM_OUT")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func determinismChild(dir, outFile string) error {
	if _, off := time.Now().Zone(); off != 9*3600 {
		return fmt.Errorf("child time zone offset %d, want Asia/Tokyo", off)
	}
	syscall.Umask(0o077)
	im, err := Open(context.Background(), "oci:"+dir)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if _, err := Flatten(context.Background(), im, &out, DefaultFlattenOptions()); err != nil {
		return err
	}
	return os.WriteFile(outFile, out.Bytes(), 0o600)
}
