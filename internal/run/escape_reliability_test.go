package run

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/manifest"
)

// TestRunContainsSymlinkEscapes is the run-time half of the image escape
// cases (docs/reliability.md): the image carries symlinks that point at a
// host path, absolutely and through "..", and the container writes through
// each. The writes must land in the container's own root (the overlay's
// upper dir), never on the host path, and the host file must be untouched.
// Absolute symlinks are legal in images (internal/oci keeps them), so this
// containment is what protects the host.
func TestRunContainsSymlinkEscapes(t *testing.T) {
	requireRunc(t)
	host := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(host, []byte("host content\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"absolute": host,
		"dotdot":   strings.Repeat("../", 12) + strings.TrimPrefix(host, "/"),
	}
	for name, target := range links {
		t.Run(name, func(t *testing.T) {
			lower := makeRootfs(t)
			if err := os.Symlink(target, filepath.Join(lower, "escape")); err != nil {
				t.Fatal(err)
			}
			// The target's directory exists inside the image too, so the
			// write can succeed inside the container's root.
			if err := os.MkdirAll(filepath.Join(lower, filepath.Dir(host)), 0o755); err != nil {
				t.Fatal(err)
			}
			state := filepath.Join(t.TempDir(), "state")
			res, err := Run(context.Background(), Options{
				Lower: lower, StateDir: state, Keep: true,
				Config: manifest.Config{Entrypoint: []string{"/probe"}},
				Env:    []string{"PROBE_WRITE=/escape"},
				Log:    testLogger(t),
			})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.ExitCode != 0 {
				t.Fatalf("ExitCode = %d, want 0 (the write through /escape failed)", res.ExitCode)
			}
			if b, err := os.ReadFile(host); err != nil || string(b) != "host content\n" {
				t.Errorf("host file after the run = %q, %v; want it untouched", b, err)
			}
			inside := filepath.Join(state, "upper", host)
			if b, err := os.ReadFile(inside); err != nil || string(b) != "written by probe\n" {
				t.Errorf("container's copy %s = %q, %v; want the probe's write", inside, b, err)
			}
		})
	}
}
