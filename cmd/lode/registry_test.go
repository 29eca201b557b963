package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
)

// TestBuildFromRegistryCLI: `lode build docker://…` as a user types it
// (credentials from REGISTRY_AUTH_FILE, the CA by flag), then `lode images`
// shows the source digest, `lode inspect` the whole source record, and a
// second build of the same digest is a no-op.
func TestBuildFromRegistryCLI(t *testing.T) {
	c := newCLI(t)
	t.Setenv("HOME", t.TempDir())
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Users: map[string]string{"dev": "pw"}})
	auth := filepath.Join(t.TempDir(), "auth.json")
	reg.Login(t, auth, "dev", "pw")
	t.Setenv("REGISTRY_AUTH_FILE", auth)
	dir := filepath.Join(t.TempDir(), "layout")
	lodetest.WriteLayout(t, dir, "v1", lodetest.TestImage{Platform: "linux/amd64", Cmd: []string{"/bin/app"}, Layers: [][]byte{
		lodetest.Files(t, []string{"bin/app"}, map[string]string{"bin/app": "#!"}),
		lodetest.Files(t, []string{"etc/app.conf"}, map[string]string{"etc/app.conf": "x=1"}),
	}})
	ref := reg.PushImage(t, "oci:"+dir+":v1", "team/app:v1", auth)

	if err := c.execLode(t, "keys", "create"); err != nil {
		t.Fatal(err)
	}
	if err := c.execLode(t, "build", ref, "--name", "app", "--registry-ca", reg.CAFile); err != nil {
		t.Fatalf("lode build %s: %v\n%s", ref, err, c.stderr.String())
	}
	out := c.stdout.String()
	if !strings.Contains(out, "source "+ref+": manifest sha256:") || !strings.Contains(out, "2 layers") {
		t.Errorf("lode build output lacks the source line:\n%s", out)
	}
	// Not a terminal: one line per layer, in order, with bytes and rate.
	for _, l := range []string{"pulled layer 1/2 sha256:", "pulled layer 2/2 sha256:"} {
		if !strings.Contains(c.stderr.String(), l) || !strings.Contains(c.stderr.String(), "/s)") {
			t.Errorf("lode build stderr lacks %q with a rate:\n%s", l, c.stderr.String())
		}
	}
	m, _ := publicManifest(t, "app")

	since := func(n int) string { return c.stdout.String()[n:] }
	n := len(c.stdout.String())
	if err := c.execLode(t, "images"); err != nil {
		t.Fatal(err)
	}
	if imgs := since(n); !strings.Contains(imgs, "SOURCE") || !strings.Contains(imgs, m.SourceDigest[:19]) {
		t.Errorf("lode images does not show the source digest %s:\n%s", m.SourceDigest, imgs)
	}
	n = len(c.stdout.String())
	if err := c.execLode(t, "inspect", "app"); err != nil {
		t.Fatal(err)
	}
	insp := since(n)
	chains := m.ChainIDs()
	for label, want := range map[string]string{
		"source": ref, "source digest": m.SourceDigest, "source index": "(none)",
		"layer 0": "diff ID " + m.DiffIDs[0] + ", chain ID " + chains[0],
		"layer 1": "diff ID " + m.DiffIDs[1] + ", chain ID " + chains[1],
	} {
		if got := field(t, insp, label); got != want {
			t.Errorf("lode inspect %s: = %q, want %q", label, got, want)
		}
	}
	n = len(c.stdout.String())
	if err := c.execLode(t, "build", ref, "--name", "app", "--registry-ca", reg.CAFile); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(since(n), "unchanged default/app: already built from "+ref) {
		t.Errorf("second lode build = %q, want unchanged", since(n))
	}
	// A refusal a flag can change names the flag.
	if err := c.execLode(t, "build", ref, "--name", "app2"); err == nil || !strings.Contains(err.Error(), "--registry-ca") {
		t.Errorf("lode build without the CA = %v, want an error naming --registry-ca", err)
	}
}
