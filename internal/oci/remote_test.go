package oci

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/lodetest"
)

// isolateCredentials points every credential location at an empty
// directory, so that the machine's own logins never leak into a test.
func isolateCredentials(t *testing.T) string {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, v := range []string{"REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"} {
		t.Setenv(v, "")
	}
	return home
}

// twoLayers is a base layer and one that deletes and adds a file.
func twoLayers(t testing.TB) [][]byte {
	return [][]byte{
		tarOf(t, te{name: "etc/", mode: 0o755}, te{name: "etc/os-release", body: "ID=test\n"}, te{name: "etc/old", body: "old"}),
		tarOf(t, te{name: "etc/.wh.old"}, te{name: "app/", mode: 0o755}, te{name: "app/run", body: "#!/bin/sh\n", mode: 0o755}),
	}
}

var twoLayersFlat = []string{"D etc 755", `F etc/os-release 644 "ID=test\n"`, "D app 755", `F app/run 755 "#!/bin/sh\n"`}

// pushed is an image pushed to a test registry.
type pushed struct {
	reg    *lodetest.Registry
	ref    string // docker://…
	layout string // the OCI layout it was pushed from
}

func push(t *testing.T, reg *lodetest.Registry, repoTag, authFile string, images ...lodetest.TestImage) pushed {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	lodetest.WriteLayout(t, dir, "t", images...)
	return pushed{reg: reg, ref: reg.PushImage(t, "oci:"+dir+":t", repoTag, authFile), layout: dir}
}

func openFlatten(t *testing.T, ref string, ro RemoteOptions) (*Image, []string, error) {
	t.Helper()
	ctx := t.Context()
	im, err := OpenWith(ctx, ref, ro)
	if err != nil {
		return nil, nil, err
	}
	defer im.Close()
	var out bytes.Buffer
	if _, err := Flatten(ctx, im, &out, DefaultFlattenOptions()); err != nil {
		return im, nil, err
	}
	return im, listTar(t, out.Bytes()), nil
}

// manifestDigest asks the registry for ref's digest (Docker-Content-Digest).
func manifestDigest(t *testing.T, reg *lodetest.Registry, repo, tag, user, pass string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, reg.URL()+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := reg.Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Header.Get("Docker-Content-Digest")
}

// TestRemoteTLSAuth reads an image from a TLS registry with htpasswd basic
// auth, with credentials from each place users keep them.
func TestRemoteTLSAuth(t *testing.T) {
	home := isolateCredentials(t)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Users: map[string]string{"alice": "s3cret"}})
	login := filepath.Join(t.TempDir(), "auth.json")
	reg.Login(t, login, "alice", "s3cret")
	p := push(t, reg, "team/app:v1", login, lodetest.TestImage{Platform: "linux/amd64", Layers: twoLayers(t), Cmd: []string{"/app/run"}})
	authJSON, err := os.ReadFile(login)
	if err != nil {
		t.Fatal(err)
	}
	place := func(path string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, authJSON, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A credential helper, as `docker login` with credsStore/credHelpers uses.
	helperDir := t.TempDir()
	helper := fmt.Sprintf("#!/bin/sh\nread host\nprintf '{\"ServerURL\":\"%%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}' \"$host\"\n")
	if err := os.WriteFile(filepath.Join(helperDir, "docker-credential-lodetest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}

	ro := RemoteOptions{CAFile: reg.CAFile}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) RemoteOptions
	}{
		{"--authfile", func(t *testing.T) RemoteOptions { o := ro; o.AuthFile = login; return o }},
		{"REGISTRY_AUTH_FILE", func(t *testing.T) RemoteOptions { t.Setenv("REGISTRY_AUTH_FILE", login); return ro }},
		{"XDG_RUNTIME_DIR containers auth.json", func(t *testing.T) RemoteOptions {
			d := t.TempDir()
			place(filepath.Join(d, "containers", "auth.json"))
			t.Setenv("XDG_RUNTIME_DIR", d)
			return ro
		}},
		{"~/.config/containers/auth.json", func(t *testing.T) RemoteOptions {
			place(filepath.Join(home, ".config", "containers", "auth.json"))
			t.Cleanup(func() { os.RemoveAll(filepath.Join(home, ".config")) })
			return ro
		}},
		{"docker config.json", func(t *testing.T) RemoteOptions {
			d := t.TempDir()
			place(filepath.Join(d, "config.json"))
			t.Setenv("DOCKER_CONFIG", d)
			return ro
		}},
		{"docker config.json beside an unrelated one", func(t *testing.T) RemoteOptions {
			// ggcr's DefaultKeychain stops at the Docker config even when it
			// has no entry for the host; the chain goes on to skopeo's file.
			d := t.TempDir()
			os.WriteFile(filepath.Join(d, "config.json"), []byte(`{"auths":{"other.example":{"auth":"eDp5"}}}`), 0o600)
			t.Setenv("DOCKER_CONFIG", d)
			t.Setenv("REGISTRY_AUTH_FILE", login)
			return ro
		}},
		{"credential helper", func(t *testing.T) RemoteOptions {
			d := t.TempDir()
			os.WriteFile(filepath.Join(d, "config.json"), []byte(`{"credHelpers":{"`+reg.Host+`":"lodetest"}}`), 0o600)
			t.Setenv("DOCKER_CONFIG", d)
			t.Setenv("PATH", helperDir+string(os.PathListSeparator)+os.Getenv("PATH"))
			return ro
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, got, err := openFlatten(t, p.ref, tc.setup(t))
			if err != nil {
				t.Fatalf("OpenWith+Flatten(%s) = %v", p.ref, err)
			}
			if d := cmp.Diff(twoLayersFlat, got); d != "" {
				t.Errorf("flattened mismatch (-want +got):\n%s", d)
			}
			src := im.Source()
			want := manifestDigest(t, reg, "team/app", "v1", "alice", "s3cret")
			if src.Ref != p.ref || src.Digest != want || src.IndexDigest != "" || len(src.DiffIDs) != 2 || !src.Remote {
				t.Errorf("Source() = %+v, want ref %s digest %s, 2 diff IDs", src, p.ref, want)
			}
			if c := im.Config(); !cmp.Equal(c.Cmd, []string{"/app/run"}) {
				t.Errorf("Config().Cmd = %q", c.Cmd)
			}
		})
	}

	// Refusals, each with what to do about it.
	wrong := filepath.Join(t.TempDir(), "wrong.json")
	reg.Login(t, wrong, "alice", "s3cret")
	b, _ := os.ReadFile(wrong)
	os.WriteFile(wrong, bytes.Replace(b, []byte("YWxpY2U6czNjcmV0"), []byte("YWxpY2U6d3Jvbmc="), 1), 0o600) // alice:wrong
	for _, tc := range []struct {
		name   string
		ro     RemoteOptions
		want   error
		naming []string
	}{
		{"no credentials", ro, ErrUnauthorized, []string{"no credentials", "skopeo login " + reg.Host, "docker login"}},
		{"wrong password", RemoteOptions{CAFile: reg.CAFile, AuthFile: wrong}, ErrUnauthorized, []string{wrong, "refused"}},
		{"unknown CA", RemoteOptions{AuthFile: login}, nil, []string{"--registry-ca"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, err := OpenWith(t.Context(), p.ref, tc.ro)
			if err == nil {
				im.Close()
				t.Fatalf("OpenWith(%s) succeeded, want %v", p.ref, tc.want)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("OpenWith = %v, want %v", err, tc.want)
			}
			for _, s := range tc.naming {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("OpenWith error %q does not say %q", err, s)
				}
			}
		})
	}
}

// TestRemoteBearerToken reads through bearer-token auth (distribution's
// token auth with the in-test token server, lodetest.RegistryOptions.Token).
func TestRemoteBearerToken(t *testing.T) {
	isolateCredentials(t)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{TLS: true, Token: true, Users: map[string]string{"carol": "tok3n"}})
	login := filepath.Join(t.TempDir(), "auth.json")
	reg.Login(t, login, "carol", "tok3n")
	p := push(t, reg, "team/app:v1", login, lodetest.TestImage{Platform: "linux/amd64", Layers: twoLayers(t)})
	_, got, err := openFlatten(t, p.ref, RemoteOptions{CAFile: reg.CAFile, AuthFile: login})
	if err != nil {
		t.Fatalf("OpenWith+Flatten(%s) with a bearer token = %v", p.ref, err)
	}
	if d := cmp.Diff(twoLayersFlat, got); d != "" {
		t.Errorf("flattened mismatch (-want +got):\n%s", d)
	}
	if _, err := OpenWith(t.Context(), p.ref, RemoteOptions{CAFile: reg.CAFile}); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "skopeo login") {
		t.Errorf("OpenWith(no credentials, token auth) = %v, want ErrUnauthorized with a login hint", err)
	}
}

// TestRemoteIndex reads a two-platform index from a plain HTTP registry.
func TestRemoteIndex(t *testing.T) {
	isolateCredentials(t)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{})
	amd := tarOf(t, te{name: "arch", body: "amd64"})
	arm := tarOf(t, te{name: "arch", body: "arm64"})
	p := push(t, reg, "multi:v1", "",
		lodetest.TestImage{Platform: "linux/amd64", Layers: [][]byte{amd}},
		lodetest.TestImage{Platform: "linux/arm64/v8", Layers: [][]byte{arm}})
	index := manifestDigest(t, reg, "multi", "v1", "", "")
	ro := RemoteOptions{Insecure: []string{reg.Host}}
	for _, tc := range []struct {
		platform string
		want     []string
		err      error
		naming   []string
	}{
		{"linux/amd64", []string{`F arch 644 "amd64"`}, nil, nil},
		{"linux/arm64", []string{`F arch 644 "arm64"`}, nil, nil},
		{"linux/s390x", nil, ErrNoPlatform, []string{"linux/amd64, linux/arm64/v8", "--platform"}},
	} {
		t.Run(tc.platform, func(t *testing.T) {
			o := ro
			o.Platform = tc.platform
			im, got, err := openFlatten(t, p.ref, o)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("OpenWith(%s) = %v, want %v", tc.platform, err, tc.err)
				}
				for _, s := range tc.naming {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("flattened mismatch (-want +got):\n%s", d)
			}
			if s := im.Source(); s.IndexDigest != index || s.Digest == index || s.Digest == "" {
				t.Errorf("Source() = %+v, want index digest %s and a platform manifest digest", s, index)
			}
		})
	}
	// Plain HTTP is refused unless the host is named.
	if _, err := OpenWith(t.Context(), p.ref, RemoteOptions{}); !errors.Is(err, ErrPlainHTTP) || !strings.Contains(err.Error(), "--insecure-registry "+reg.Host) {
		t.Errorf("OpenWith(plain HTTP, not named insecure) = %v, want ErrPlainHTTP naming --insecure-registry", err)
	}
}

// faultProxy forwards to a registry and counts blob bytes; it can stall or
// drop a blob response after some bytes.
type faultProxy struct {
	srv       *httptest.Server
	blobBytes atomic.Int64
	perBlob   sync.Map // path → *atomic.Int64
	mu        sync.Mutex
	stallAt   int64         // stall blob responses after this many bytes (-1: never)
	dropOnce  int64         // drop the first blob response after this many bytes (-1: never)
	stallMF   bool          // stall manifest requests before answering
	busy      int           // answer this many next GETs with 503, then 429, alternating
	latency   time.Duration // before each blob response
	rate      int64         // bytes per second per blob response (0: unlimited)
}

func newFaultProxy(t testing.TB, reg *lodetest.Registry) *faultProxy {
	u, _ := url.Parse(reg.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	f := &faultProxy{stallAt: -1, dropOnce: -1}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		stallMF, stallAt, drop := f.stallMF, f.stallAt, f.dropOnce
		if strings.Contains(r.URL.Path, "/blobs/") && drop >= 0 {
			f.dropOnce = -1
		}
		f.mu.Unlock()
		f.mu.Lock()
		busy := f.busy
		if busy > 0 && r.Method == http.MethodGet && r.URL.Path != "/v2/" {
			f.busy--
		}
		f.mu.Unlock()
		if busy > 0 && r.Method == http.MethodGet && r.URL.Path != "/v2/" {
			code := http.StatusServiceUnavailable
			if busy%2 == 0 {
				code = http.StatusTooManyRequests
			}
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, code)
			return
		}
		if stallMF && strings.Contains(r.URL.Path, "/manifests/") {
			<-r.Context().Done()
			return
		}
		if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
			rp.ServeHTTP(w, r)
			return
		}
		f.mu.Lock()
		latency, rate := f.latency, f.rate
		f.mu.Unlock()
		time.Sleep(latency)
		rp.ServeHTTP(&blobWriter{ResponseWriter: w, f: f, r: r, stallAt: stallAt, dropAt: drop, rate: rate}, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *faultProxy) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

type blobWriter struct {
	http.ResponseWriter
	f       *faultProxy
	r       *http.Request
	n       int64
	stallAt int64
	dropAt  int64
	rate    int64
}

func (w *blobWriter) Write(b []byte) (int, error) {
	if w.dropAt >= 0 && w.n+int64(len(b)) > w.dropAt {
		k := w.dropAt - w.n
		w.ResponseWriter.Write(b[:k])
		w.count(k)
		w.ResponseWriter.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w.ResponseWriter).Hijack()
		if err == nil {
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
		return 0, errors.New("dropped")
	}
	if w.stallAt >= 0 && w.n+int64(len(b)) > w.stallAt {
		k := w.stallAt - w.n
		w.ResponseWriter.Write(b[:k])
		w.ResponseWriter.(http.Flusher).Flush()
		<-w.r.Context().Done()
		return 0, w.r.Context().Err()
	}
	if w.rate > 0 {
		time.Sleep(time.Duration(int64(len(b)) * int64(time.Second) / w.rate))
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	w.count(int64(n))
	return n, err
}

func (w *blobWriter) count(n int64) {
	w.f.blobBytes.Add(n)
	c, _ := w.f.perBlob.LoadOrStore(w.r.URL.Path[strings.LastIndex(w.r.URL.Path, "/")+1:], new(atomic.Int64))
	c.(*atomic.Int64).Add(n)
}

// layerBytes sums what the proxy sent of the image's layer blobs.
func (f *faultProxy) layerBytes(im *Image) int64 {
	var n int64
	for _, l := range im.layers {
		if c, ok := f.perBlob.Load(l.digest); ok {
			n += c.(*atomic.Int64).Load()
		}
	}
	return n
}

func (w *blobWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

// bigLayers makes layers large enough that downloads take several reads.
func bigLayers(t testing.TB, n, size int) [][]byte {
	var ls [][]byte
	x := uint64(88172645463325252)
	for i := range n {
		body := make([]byte, size) // incompressible: gzip keeps its size
		for j := range body {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			body[j] = byte(x)
		}
		ls = append(ls, tarOf(t, te{name: fmt.Sprintf("f%d", i), body: string(body)}))
	}
	return ls
}

// layerSizes sums the compressed layer sizes of the pushed image.
func layerSizes(t *testing.T, ref string, ro RemoteOptions) int64 {
	im, err := OpenWith(t.Context(), ref, ro)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	p := im.closer.(*prefetcher)
	var n int64
	for _, l := range p.layers {
		n += l.size
	}
	return n
}

// TestRemoteFaults: bytes read once, a dropped connection resumed, a stall
// and a corrupt blob failing with clear errors, unknown names and media
// types refused.
func TestRemoteFaults(t *testing.T) {
	isolateCredentials(t)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{})
	proxy := newFaultProxy(t, reg)
	host := proxy.host()
	push(t, reg, "big:v1", "", lodetest.TestImage{Platform: "linux/amd64", Layers: bigLayers(t, 3, 256<<10)})
	ref := "docker://" + host + "/big:v1"
	ro := RemoteOptions{Insecure: []string{host, reg.Host}, Timeout: 2 * time.Second}
	total := layerSizes(t, ref, ro)
	want := []string{"f0", "f1", "f2"}
	names := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			out = append(out, strings.Fields(l)[1])
		}
		return out
	}

	t.Run("each byte once", func(t *testing.T) {
		proxy.perBlob.Clear()
		im, got, err := openFlatten(t, ref, ro)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, names(got)); d != "" {
			t.Errorf("flattened mismatch (-want +got):\n%s", d)
		}
		if b := proxy.layerBytes(im); b != total || im.Pulled() != total {
			t.Errorf("registry sent %d blob bytes, image counted %d; want the layer sizes once, %d", b, im.Pulled(), total)
		}
	})
	t.Run("dropped connection resumes", func(t *testing.T) {
		proxy.perBlob.Clear()
		im, err := OpenWith(t.Context(), ref, ro)
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		proxy.mu.Lock()
		proxy.dropOnce = 100 << 10 // the next blob is a layer (Open fetched the config)
		proxy.mu.Unlock()
		var out bytes.Buffer
		_, err = Flatten(t.Context(), im, &out, DefaultFlattenOptions())
		got := listTar(t, out.Bytes())
		if err != nil {
			t.Fatalf("Flatten after a dropped connection = %v", err)
		}
		if d := cmp.Diff(want, names(got)); d != "" {
			t.Errorf("flattened mismatch (-want +got):\n%s", d)
		}
		// The dropped layer is fetched again from its start.
		if b := proxy.layerBytes(im); b != total+100<<10 {
			t.Errorf("registry sent %d layer bytes, want %d (the layers once, plus the 100 KiB before the drop)", b, total+100<<10)
		}
	})
	t.Run("429 and 503 retried", func(t *testing.T) {
		proxy.mu.Lock()
		proxy.busy = 2 // 429 then 503: the manifest request is refused twice, then served
		proxy.mu.Unlock()
		_, got, err := openFlatten(t, ref, ro)
		if err != nil {
			t.Fatalf("Flatten through 429/503 answers = %v", err)
		}
		if d := cmp.Diff(want, names(got)); d != "" {
			t.Errorf("flattened mismatch (-want +got):\n%s", d)
		}
		proxy.mu.Lock()
		left := proxy.busy
		proxy.mu.Unlock()
		if left != 0 {
			t.Errorf("%d refusals left unconsumed", left)
		}
	})
	t.Run("stalled blob", func(t *testing.T) {
		proxy.mu.Lock()
		proxy.stallAt = 64 << 10
		proxy.mu.Unlock()
		defer func() { proxy.mu.Lock(); proxy.stallAt = -1; proxy.mu.Unlock() }()
		o := ro
		o.Timeout = 300 * time.Millisecond
		_, _, err := openFlatten(t, ref, o)
		if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "--registry-timeout") {
			t.Errorf("Flatten(stalled blob) = %v, want ErrStalled naming --registry-timeout", err)
		}
	})
	t.Run("stalled manifest", func(t *testing.T) {
		proxy.mu.Lock()
		proxy.stallMF = true
		proxy.mu.Unlock()
		defer func() { proxy.mu.Lock(); proxy.stallMF = false; proxy.mu.Unlock() }()
		o := ro
		o.Timeout = 300 * time.Millisecond
		if _, err := OpenWith(t.Context(), ref, o); !errors.Is(err, ErrStalled) {
			t.Errorf("OpenWith(stalled manifest) = %v, want ErrStalled", err)
		}
	})
	t.Run("corrupt blob", func(t *testing.T) {
		im, err := OpenWith(t.Context(), ref, ro)
		if err != nil {
			t.Fatal(err)
		}
		d := im.layers[1].digest
		im.Close()
		path := reg.BlobPath(d)
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(path, orig, 0o644)
		bad := bytes.Clone(orig)
		bad[len(bad)/2] ^= 0xff
		os.WriteFile(path, bad, 0o644)
		_, _, err = openFlatten(t, ref, ro)
		var ee *EntryError
		if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ee) || ee.Layer != 1 || !strings.Contains(err.Error(), shortDigest(d)) {
			t.Errorf("Flatten(corrupt blob) = %v, want ErrCorrupt for layer 1 naming %s", err, d)
		}
	})
	for _, tc := range []struct {
		name, ref string
		want      error
	}{
		{"unknown tag", "docker://" + reg.Host + "/big:nope", ErrNotFound},
		{"unknown repository", "docker://" + reg.Host + "/nothere:v1", ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenWith(t.Context(), tc.ref, ro)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "skopeo login") || !strings.Contains(err.Error(), "UNKNOWN") {
				t.Errorf("OpenWith(%s) = %v, want %v with the registry's answer and a login hint", tc.ref, err, tc.want)
			}
		})
	}
}

// TestRemoteUnsupportedLayerMediaType: an image whose layer is not a tar
// (here a WebAssembly module, as OCI artifacts carry) is refused at Open,
// naming the layer and its media type.
func TestRemoteUnsupportedLayerMediaType(t *testing.T) {
	isolateCredentials(t)
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{})
	const wasm = "application/vnd.wasm.content.layer.v1+wasm"
	p := push(t, reg, "wasm:v1", "", lodetest.TestImage{Platform: "linux/amd64", Layers: [][]byte{[]byte("\x00asm\x01\x00\x00\x00")}, LayerMediaType: wasm})
	_, err := OpenWith(t.Context(), p.ref, RemoteOptions{Insecure: []string{reg.Host}})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), wasm) || !strings.Contains(err.Error(), "layer 0") {
		t.Errorf("OpenWith(wasm layer) = %v, want ErrUnsupported naming layer 0 and %s", err, wasm)
	}
}

// TestRemoteUnsupportedMediaType: a manifest lode cannot read (a Docker
// schema 1 manifest, served by a fault-injecting stand-in since
// distribution 2.8 no longer accepts them) is refused with its media type.
func TestRemoteUnsupportedMediaType(t *testing.T) {
	isolateCredentials(t)
	body := `{"schemaVersion":1,"name":"old","tag":"v1","fsLayers":[]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
		io.WriteString(w, body)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	_, err := OpenWith(t.Context(), "docker://"+host+"/old:v1", RemoteOptions{Insecure: []string{host}})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "manifest.v1+prettyjws") {
		t.Errorf("OpenWith(schema 1) = %v, want ErrUnsupported naming the media type", err)
	}
}
