package build_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/oci"
	"github.com/lode-dev/lode/internal/store/file"
)

// noCredentials keeps the machine's own logins out of a test.
func noCredentials(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, v := range []string{"REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"} {
		t.Setenv(v, "")
	}
}

func registryLayers(t testing.TB) [][]byte {
	return [][]byte{
		lodetest.Files(t, []string{"etc/os-release", "bin/sh"}, map[string]string{"etc/os-release": "ID=test\n", "bin/sh": strings.Repeat("sh", 300_000)}),
		lodetest.Files(t, []string{"app/main.py"}, map[string]string{"app/main.py": "print('hi')\n"}),
	}
}

// blobGETs counts the registry's access-log lines for GETs of digest's blob.
func blobGETs(t *testing.T, reg *lodetest.Registry, digest string) int {
	t.Helper()
	b, err := os.ReadFile(reg.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `"GET /v2/`) && strings.Contains(l, "/blobs/"+digest) {
			n++
		}
	}
	return n
}

// TestBuildFromRegistry builds docker:// from a TLS registry with basic
// auth: the manifest records the source, the catalog finds it by digest and
// chain ID, the image equals the one built from the same OCI layout, and a
// rebuild of the same digest downloads no layer unless forced.
func TestBuildFromRegistry(t *testing.T) {
	noCredentials(t)
	ctx := context.Background()
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Users: map[string]string{"bob": "pw"}})
	auth := filepath.Join(t.TempDir(), "auth.json")
	reg.Login(t, auth, "bob", "pw")
	dir := filepath.Join(t.TempDir(), "layout")
	lodetest.WriteLayout(t, dir, "v1", lodetest.TestImage{Platform: "linux/amd64", Layers: registryLayers(t), Cmd: []string{"python3", "/app/main.py"}})
	ref := reg.PushImage(t, "oci:"+dir+":v1", "team/app:v1", auth)
	t.Setenv("REGISTRY_AUTH_FILE", auth) // as `skopeo login` users have it

	st, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kr := newKeyring(t)
	ro := oci.RemoteOptions{CAFile: reg.CAFile}
	res := doBuild(t, st, kr, build.Options{Source: ref, Name: "app", Remote: ro})
	if res.Unchanged || res.Pulled == 0 || res.Source.Ref != ref {
		t.Fatalf("Build = %+v, want a fresh build that pulled layers", res)
	}
	m := publicManifest(t, st, tenant, "app")
	if m.SourceRef != ref || m.SourceDigest != res.SourceDigest || len(m.DiffIDs) != 2 || m.SourceIndexDigest != "" {
		t.Errorf("manifest source = %q %q %q %v, want %s, %s and 2 diff IDs", m.SourceRef, m.SourceDigest, m.SourceIndexDigest, m.DiffIDs, ref, res.SourceDigest)
	}
	// The same image read from the layout it was pushed from: same chunks.
	local := doBuild(t, st, kr, build.Options{Source: "oci:" + dir + ":v1", Name: "app-local"})
	if lm := publicManifest(t, st, tenant, "app-local"); !slices.Equal(lm.Names, m.Names) || local.SourceDigest != res.SourceDigest || !slices.Equal(lm.DiffIDs, m.DiffIDs) {
		t.Errorf("docker:// and oci: builds of one image differ: %d vs %d chunks, digest %s vs %s", len(m.Names), len(lm.Names), res.SourceDigest, local.SourceDigest)
	}
	found, err := catalog.FindBySource(ctx, st, tenant, res.SourceDigest)
	if err != nil || len(found) != 2 || found[0].Name != "app" || found[1].Name != "app-local" {
		t.Errorf("FindBySource(%s) = %v, %v; want app and app-local", res.SourceDigest, found, err)
	}
	chain := manifest.ChainIDs(m.DiffIDs)
	if found, err := catalog.FindByChainID(ctx, st, tenant, chain[1]); err != nil || len(found) != 2 || !found[0].Top() {
		t.Errorf("FindByChainID(top) = %v, %v", found, err)
	}

	layer := layoutLayers(t, dir)[0]
	before := blobGETs(t, reg, layer)
	again := doBuild(t, st, kr, build.Options{Source: ref, Name: "app", Remote: ro})
	if !again.Unchanged || again.Pulled != 0 || again.ManifestID != res.ManifestID {
		t.Errorf("rebuild = %+v, want unchanged, nothing pulled, manifest %s", again, res.ManifestID)
	}
	if n := blobGETs(t, reg, layer); n != before {
		t.Errorf("rebuild fetched blob %s %d more times, want 0", layer, n-before)
	}
	forced := doBuild(t, st, kr, build.Options{Source: ref, Name: "app", Remote: ro, Force: true})
	if forced.Unchanged || forced.Pulled == 0 {
		t.Errorf("forced rebuild = %+v, want a real build", forced)
	}
}

// layoutLayers returns the blob digests of the layers of the one image in
// an OCI layout.
func layoutLayers(t *testing.T, dir string) []string {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	var out []string
	for _, l := range ls {
		d, _ := l.Digest()
		out = append(out, d.String())
	}
	return out
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRegistryFailuresStoreNothing: every failure of a docker:// build
// leaves the store as it was: no chunk, no manifest, no pointer.
func TestRegistryFailuresStoreNothing(t *testing.T) {
	noCredentials(t)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Users: map[string]string{"bob": "pw"}})
	auth := filepath.Join(t.TempDir(), "auth.json")
	reg.Login(t, auth, "bob", "pw")
	wrong := filepath.Join(t.TempDir(), "wrong.json")
	os.WriteFile(wrong, bytes.Replace(mustRead(t, auth), []byte("Ym9iOnB3"), []byte("Ym9iOng="), 1), 0o600) // bob:x
	dir := filepath.Join(t.TempDir(), "layout")
	lodetest.WriteLayout(t, dir, "v1", lodetest.TestImage{Platform: "linux/amd64", Layers: registryLayers(t)})
	ref := reg.PushImage(t, "oci:"+dir+":v1", "team/app:v1", auth)
	host := reg.Host

	// Another image whose top layer's blob is corrupted in the registry's
	// storage (one byte flipped).
	badDir := filepath.Join(t.TempDir(), "bad")
	lodetest.WriteLayout(t, badDir, "v1", lodetest.TestImage{Platform: "linux/amd64", Layers: [][]byte{
		lodetest.Files(t, []string{"a"}, map[string]string{"a": strings.Repeat("a", 100_000)}),
		lodetest.Files(t, []string{"b"}, map[string]string{"b": strings.Repeat("bad", 100_000)}),
	}})
	bad := reg.PushImage(t, "oci:"+badDir+":v1", "team/bad:v1", auth)
	badLayer := layoutLayers(t, badDir)[1]
	data := mustRead(t, reg.BlobPath(badLayer))
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(reg.BlobPath(badLayer), data, 0o644); err != nil {
		t.Fatal(err)
	}

	// A front that stalls every layer blob after 512 bytes (the manifest and
	// config pass), and one that serves a Docker schema 1 manifest.
	stall := stallingFront(t, reg)
	stallAuth := filepath.Join(t.TempDir(), "stall.json") // the same login, for the front's host:port
	os.WriteFile(stallAuth, bytes.ReplaceAll(mustRead(t, auth), []byte(reg.Host), []byte(stall)), 0o600)
	schema1 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" {
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
			io.WriteString(w, `{"schemaVersion":1}`)
		}
	}))
	defer schema1.Close()
	s1host := strings.TrimPrefix(schema1.URL, "http://")

	for _, tc := range []struct {
		name   string
		source string
		ro     oci.RemoteOptions
		want   error
		say    string
	}{
		{"unknown tag", "docker://" + host + "/team/app:nope", oci.RemoteOptions{CAFile: reg.CAFile, AuthFile: auth}, oci.ErrNotFound, "skopeo login"},
		{"unknown repository", "docker://" + host + "/team/none:v1", oci.RemoteOptions{CAFile: reg.CAFile, AuthFile: auth}, oci.ErrNotFound, "MANIFEST_UNKNOWN"},
		{"no credentials", ref, oci.RemoteOptions{CAFile: reg.CAFile}, oci.ErrUnauthorized, "docker login"},
		{"wrong credentials", ref, oci.RemoteOptions{CAFile: reg.CAFile, AuthFile: wrong}, oci.ErrUnauthorized, wrong},
		{"blob not matching its digest", bad, oci.RemoteOptions{CAFile: reg.CAFile, AuthFile: auth}, oci.ErrCorrupt, badLayer},
		{"not the platform asked for", ref, oci.RemoteOptions{CAFile: reg.CAFile, AuthFile: auth, Platform: "linux/riscv64"}, oci.ErrNoPlatform, "linux/amd64"},
		{"untrusted certificate", ref, oci.RemoteOptions{AuthFile: auth}, nil, "--registry-ca"},
		{"registry stalls mid-layer", "docker://" + stall + "/team/app:v1", oci.RemoteOptions{Insecure: []string{stall}, AuthFile: stallAuth, Timeout: 300 * time.Millisecond}, oci.ErrStalled, "--registry-timeout"},
		{"unsupported manifest media type", "docker://" + s1host + "/old:v1", oci.RemoteOptions{Insecure: []string{s1host}}, oci.ErrUnsupported, "prettyjws"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := file.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			kr := newKeyring(t)
			o := build.Options{Source: tc.source, Tenant: tenant, Name: "app", TempDir: t.TempDir(), Remote: tc.ro}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err = build.Build(ctx, st, kr, kr.StoreSecret(), o)
			t.Logf("Build(%s): %v", tc.source, err) // the message a user reads
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.say) {
				t.Errorf("Build(%s) = %v, want %v saying %q", tc.source, err, tc.want, tc.say)
			}
			if objs := objects(t, st); len(objs) != 0 {
				t.Errorf("failed build left %d objects in the store: %v", len(objs), keys(objs))
			}
			if tmp, _ := os.ReadDir(o.TempDir); len(tmp) != 0 {
				t.Errorf("failed build left %d files in its temp dir", len(tmp))
			}
		})
	}
}

// stallingFront serves reg over plain HTTP on a loopback port, passing
// everything through except layer blobs (> 1 KiB), which stop after 512 bytes
// until the client gives up. It returns the front's host:port.
func stallingFront(t *testing.T, reg *lodetest.Registry) string {
	t.Helper()
	u, _ := url.Parse(reg.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = reg.Client(t).Transport
	rp.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(resp.Request.URL.Path, "/blobs/") && resp.ContentLength > 1024 {
			resp.Body = &stallAfter{rc: resp.Body, n: 512, ctx: resp.Request.Context()}
		}
		return nil
	}
	front := httptest.NewServer(rp)
	t.Cleanup(front.Close)
	return strings.TrimPrefix(front.URL, "http://")
}

type stallAfter struct {
	rc  io.ReadCloser
	n   int
	ctx context.Context
}

func (s *stallAfter) Read(p []byte) (int, error) {
	if s.n <= 0 {
		<-s.ctx.Done()
		return 0, s.ctx.Err()
	}
	n, err := s.rc.Read(p[:min(len(p), s.n)])
	s.n -= n
	return n, err
}

func (s *stallAfter) Close() error { return s.rc.Close() }

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
