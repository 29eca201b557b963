package manifest

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportWorkerKeyring checks issue #19's "keys where they belong": a
// worker keyring holds only the tenants it serves and no store secret.
func TestExportWorkerKeyring(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	full, err := CreateFileKeyring(filepath.Join(dir, "builder.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"alpha", "beta", "gamma"} {
		if err := full.AddTenant(tn); err != nil {
			t.Fatal(err)
		}
	}
	if err := full.Save(); err != nil {
		t.Fatal(err)
	}
	sealed := map[string][]byte{}
	for _, tn := range []string{"alpha", "beta", "gamma"} {
		b, err := Seal(ctx, smallManifest(), tn, full)
		if err != nil {
			t.Fatal(err)
		}
		sealed[tn] = b
	}
	if err := full.CheckWorker(); !errors.Is(err, ErrStoreSecretLoaded) || !strings.Contains(err.Error(), "lode keys export") {
		t.Errorf("CheckWorker(builder keyring) = %v; want ErrStoreSecretLoaded naming `lode keys export`", err)
	}

	path := filepath.Join(dir, "worker.json")
	if _, err := full.Export(path, []string{"alpha", "gamma"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("worker keyring mode = %04o, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	var onDisk map[string]json.RawMessage
	if err := json.Unmarshal(raw, &onDisk); err != nil {
		t.Fatal(err)
	}
	if _, ok := onDisk["store_secret"]; ok {
		t.Errorf("worker keyring file has a store_secret field:\n%s", raw)
	}
	w, err := LoadFileKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.Tenants(), ","); got != "alpha,gamma" {
		t.Errorf("worker Tenants() = %s, want alpha,gamma", got)
	}
	if w.HasStoreSecret() || w.StoreSecret() != nil {
		t.Error("worker keyring has a store secret")
	}
	if err := w.CheckWorker(); err != nil {
		t.Errorf("CheckWorker(worker keyring) = %v, want nil", err)
	}
	if _, err := w.BuilderSecret(); !errors.Is(err, ErrNoStoreSecret) {
		t.Errorf("BuilderSecret(worker keyring) = %v, want ErrNoStoreSecret", err)
	}
	for _, tn := range []string{"alpha", "gamma"} {
		if m, err := Open(ctx, sealed[tn], tn, w); err != nil || diffManifest(m, smallManifest()) != "" {
			t.Errorf("Open(%s) with the worker keyring = %v", tn, err)
		}
	}
	// A request for a tenant the worker does not serve fails clearly.
	_, err = Open(ctx, sealed["beta"], "beta", w)
	if !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), `"beta"`) || !strings.Contains(err.Error(), "worker keyring") {
		t.Errorf("Open(beta) with a worker keyring for alpha,gamma = %v; want ErrNoKey naming the tenant", err)
	}
	// And asking as a served tenant for another's manifest is refused too.
	if _, err := Open(ctx, sealed["beta"], "alpha", w); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open(beta's manifest as alpha) = %v; want ErrWrongKey", err)
	}

	// Refusals: an unknown tenant writes nothing; an existing file is kept.
	p2 := filepath.Join(dir, "w2.json")
	if _, err := full.Export(p2, []string{"alpha", "nobody"}); !errors.Is(err, ErrNoKey) {
		t.Errorf("Export(unknown tenant) = %v; want ErrNoKey", err)
	}
	if _, err := os.Stat(p2); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Export(unknown tenant) left a file: %v", err)
	}
	if _, err := full.Export(path, []string{"alpha"}); !errors.Is(err, ErrExists) {
		t.Errorf("Export(existing path) = %v; want ErrExists", err)
	}
	if _, err := full.Export(p2, nil); err == nil {
		t.Error("Export(no tenants) succeeded")
	}
}
