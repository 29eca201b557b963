package lodetest_test

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
)

// TestRegistry checks the helpers themselves: a TLS registry with basic
// auth refuses anonymous reads, and an index pushed with skopeo is served.
func TestRegistry(t *testing.T) {
	r := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Users: map[string]string{"u": "p"}})
	dir := filepath.Join(t.TempDir(), "l")
	lodetest.WriteLayout(t, dir, "v1",
		lodetest.TestImage{Platform: "linux/amd64", Layers: [][]byte{lodetest.Files(t, []string{"a/b"}, map[string]string{"a/b": "x"})}},
		lodetest.TestImage{Platform: "linux/arm64", Layers: [][]byte{lodetest.Files(t, []string{"a/c"}, map[string]string{"a/c": "y"})}})
	auth := filepath.Join(t.TempDir(), "auth.json")
	r.Login(t, auth, "u", "p")
	if got, want := r.PushImage(t, "oci:"+dir+":v1", "x/y:v1", auth), "docker://"+r.Host+"/x/y:v1"; got != want {
		t.Errorf("PushImage = %s, want %s", got, want)
	}
	c := r.Client(t)
	req, _ := http.NewRequest(http.MethodGet, r.URL()+"/v2/x/y/manifests/v1", nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous GET manifest = %d, want 401", resp.StatusCode)
	}
	req.SetBasicAuth("u", "p")
	if resp, err = c.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || !strings.Contains(ct, "index") {
		t.Errorf("GET manifest with credentials = %d %s, want 200 and an index", resp.StatusCode, ct)
	}
}

// TestRegistryToken: with bearer-token auth, skopeo logs in and pushes
// through the in-test token server, and the registry refuses anonymous
// reads with a Bearer challenge.
func TestRegistryToken(t *testing.T) {
	r := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Token: true, Users: map[string]string{"u": "p"}})
	dir := filepath.Join(t.TempDir(), "l")
	lodetest.WriteLayout(t, dir, "v1", lodetest.TestImage{Platform: "linux/amd64", Layers: [][]byte{lodetest.Files(t, []string{"a"}, map[string]string{"a": "x"})}})
	auth := filepath.Join(t.TempDir(), "auth.json")
	r.Login(t, auth, "u", "p")
	r.PushImage(t, "oci:"+dir+":v1", "x/y:v1", auth)
	resp, err := r.Client(t).Get(r.URL() + "/v2/x/y/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ch := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(ch, "Bearer ") {
		t.Errorf("anonymous GET = %d, challenge %q; want 401 Bearer", resp.StatusCode, ch)
	}
}
