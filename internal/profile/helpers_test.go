package profile

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

const root = store.RootID("r1")

func keyring(t testing.TB, tenants ...string) *manifest.FileKeyring {
	t.Helper()
	kr, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range tenants {
		if err := kr.AddTenant(tn); err != nil {
			t.Fatal(err)
		}
	}
	return kr
}

// opened seals a manifest of n chunks (chunk 0 a hole) for tenant with kr
// and opens it again, as a worker does: the result has its subkeys.
func opened(t testing.TB, kr manifest.Keyring, tenant string, n int) (Image, []byte) {
	t.Helper()
	ctx := context.Background()
	m := &manifest.Manifest{Root: string(root), ChunkSize: chunk.DefaultSize, ImageSize: int64(n) * chunk.DefaultSize, FSType: "ext4"}
	for i := range n {
		var name chunk.Name
		var k chunk.Key
		if i != 0 {
			name[0], name[1], k[0] = byte(i), byte(i>>8), byte(i)
		}
		m.Names = append(m.Names, name)
		m.Keys = append(m.Keys, k)
	}
	sealed, err := manifest.Seal(ctx, m, tenant, kr)
	if err != nil {
		t.Fatal(err)
	}
	om, err := manifest.Open(ctx, sealed, tenant, kr)
	if err != nil {
		t.Fatal(err)
	}
	return Image{Root: root, ID: manifest.ID(sealed), M: om}, sealed
}

func subkey(t testing.TB, im Image) []byte {
	t.Helper()
	k, err := im.key()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
