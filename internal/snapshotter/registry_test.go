package snapshotter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/lode-dev/lode/internal/lodetest"
)

// RegistryLayers fetches a blob from a real registry that requires basic
// auth, plain HTTP configured by a hosts.toml as containerd's CRI plugin
// reads it, with credentials from the keychain; without them it is refused.
func TestRegistryLayersAuth(t *testing.T) {
	lodetest.Require(t, lodetest.DockerRegistry)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{Users: map[string]string{"lode": "s3cret"}})
	blob, d := layer(t, map[string]string{"etc/os": "debian"})
	repo, err := name.NewRepository(reg.Host+"/base", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	basic := &authn.Basic{Username: "lode", Password: "s3cret"}
	if err := remote.WriteLayer(repo, static.NewLayer(blob, types.OCILayer), remote.WithAuth(basic)); err != nil {
		t.Fatalf("pushing the blob: %v", err)
	}
	hosts := t.TempDir()
	os.MkdirAll(filepath.Join(hosts, reg.Host), 0o755)
	toml := fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", reg.Host, reg.Host)
	if err := os.WriteFile(filepath.Join(hosts, reg.Host, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/base:1"
	ctx := context.Background()

	if rc, err := (RegistryLayers{HostsDir: hosts}).Open(ctx, ref, d); err == nil {
		rc.Close()
		t.Errorf("an anonymous fetch from a registry that requires auth succeeded")
	}
	kc := authn.NewMultiKeychain(staticKeychain{reg.Host: basic})
	rc, err := RegistryLayers{HostsDir: hosts, Keychain: kc}.Open(ctx, ref, d)
	if err != nil {
		t.Fatalf("Open with credentials: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, blob) || digest.FromBytes(got) != d {
		t.Errorf("fetched %d bytes (%v), want the %d-byte blob %s", len(got), err, len(blob), d)
	}
}

// staticKeychain answers fixed credentials per registry host.
type staticKeychain map[string]authn.Authenticator

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if a, ok := k[r.RegistryStr()]; ok {
		return a, nil
	}
	return authn.Anonymous, nil
}
