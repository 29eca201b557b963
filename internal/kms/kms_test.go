package kms_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/kms"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

const (
	key1 = "6b1f1d4c-0c43-4f6e-9d38-5a1f0e1d2c01"
	key2 = "6b1f1d4c-0c43-4f6e-9d38-5a1f0e1d2c02"
)

func material(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// world is a small image in an in-memory origin and a worker keyring whose
// tenant "acme" names a KMS key.
type world struct {
	kr    *manifest.FileKeyring
	m     *manifest.Manifest
	plain []byte
	st    *mem.Store
}

func newWorld(t *testing.T, srv *lodetest.KMS, keyID string) *world {
	t.Helper()
	kr, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.AddKMSTenant("acme", manifest.KMSKey{KeyID: keyID, Region: srv.Region, Endpoint: srv.Endpoint}); err != nil {
		t.Fatal(err)
	}
	kr.SetKMS(kms.Dial)
	w := &world{kr: kr, st: mem.New(), plain: make([]byte, 3*4096)}
	rand.Read(w.plain)
	s, err := chunk.NewSealer(bytes.Repeat([]byte{1}, chunk.SecretSize))
	if err != nil {
		t.Fatal(err)
	}
	w.m = &manifest.Manifest{Root: "r1", ChunkSize: 4096, ImageSize: int64(len(w.plain)), FSType: "ext4"}
	for i := 0; i < 3; i++ {
		ref, ct, err := s.Seal(w.plain[i*4096:(i+1)*4096], []byte("r1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		w.m.Names, w.m.Keys = append(w.m.Names, ref.Name), append(w.m.Keys, ref.Key)
		w.st.Put(context.Background(), store.ChunkKey("r1", ref.Name), ct)
	}
	return w
}

func (w *world) seal(t *testing.T, image string) []byte {
	t.Helper()
	b, err := manifest.SealImage(context.Background(), w.m, "acme", image, w.kr)
	if err != nil {
		t.Fatalf("SealImage(%s) = %v", image, err)
	}
	return b
}

// TestKMSEnvelope: data keys come from KMS, bound to tenant and image; the
// keyring file names the key and holds no key material.
func TestKMSEnvelope(t *testing.T) {
	srv := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}})
	w := newWorld(t, srv, key1)
	ctx := context.Background()
	sealed := w.seal(t, "app")
	m, err := manifest.OpenImage(ctx, sealed, "acme", "app", w.kr)
	if err != nil {
		t.Fatalf("OpenImage(app) = %v", err)
	}
	if m.Keys[1] != w.m.Keys[1] {
		t.Error("opened manifest has other chunk keys")
	}
	tests := []struct {
		name, tenant, image string
		want                error
	}{
		{"wrong image in the encryption context", "acme", "other", manifest.ErrWrongKey},
		{"no image in the encryption context", "acme", "", manifest.ErrWrongKey},
		{"another tenant", "globex", "app", manifest.ErrWrongKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := manifest.OpenImage(ctx, sealed, tt.tenant, tt.image, w.kr); !errors.Is(err, tt.want) {
				t.Errorf("OpenImage(%s, %s) = %v; want %v", tt.tenant, tt.image, err, tt.want)
			}
		})
	}
	// The plain Wrap path is refused for a KMS tenant: no unbound keys.
	if _, err := manifest.Seal(ctx, w.m, "acme", w.kr); err == nil || !strings.Contains(err.Error(), "image") {
		t.Errorf("Seal without an image name for a KMS tenant = %v; want an error asking for it", err)
	}
	// Exported to a worker keyring: the entry travels, no key material.
	wk := filepath.Join(t.TempDir(), "worker.json")
	if _, err := w.kr.Export(wk, []string{"acme"}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(wk)
	if !strings.Contains(string(raw), key1) || strings.Contains(string(raw), "store_secret") {
		t.Errorf("worker keyring = %s; want the KMS key id and no store secret", raw)
	}
	wkr, err := manifest.LoadFileKeyring(wk)
	if err != nil {
		t.Fatal(err)
	}
	wkr.SetKMS(kms.Dial)
	if _, err := manifest.OpenImage(ctx, sealed, "acme", "app", wkr); err != nil {
		t.Errorf("OpenImage with the exported worker keyring = %v", err)
	}
}

// TestKMSRotation covers both rotations: KMS rotating a key's material
// (same key id, new backing key) and the operator moving a tenant to a new
// key (RotateKMSKey). Manifests sealed before either still open.
func TestKMSRotation(t *testing.T) {
	ctx := context.Background()
	t.Run("key material rotated by KMS", func(t *testing.T) {
		before := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}})
		w := newWorld(t, before, key1)
		old := w.seal(t, "app")
		before.Stop()
		// The same key after rotation: new material wraps, old still unwraps.
		after := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1), material(2)}})
		w.kr.RotateKMSKey("acme", key1) // no-op: same key
		w2 := newWorld(t, after, key1)
		w2.m = w.m
		fresh := w2.seal(t, "app")
		for name, b := range map[string][]byte{"sealed before": old, "sealed after": fresh} {
			if _, err := manifest.OpenImage(ctx, b, "acme", "app", w2.kr); err != nil {
				t.Errorf("%s the rotation: OpenImage = %v", name, err)
			}
		}
		// The fresh manifest really used the new material: a KMS that only
		// has the old one cannot unwrap it.
		only := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}})
		w3 := newWorld(t, only, key1)
		if _, err := manifest.OpenImage(ctx, fresh, "acme", "app", w3.kr); !errors.Is(err, manifest.ErrWrongKey) {
			t.Errorf("OpenImage(after rotation) on a KMS without the new material = %v; want ErrWrongKey", err)
		}
		if _, err := manifest.OpenImage(ctx, old, "acme", "app", w3.kr); err != nil {
			t.Errorf("OpenImage(before rotation) on the old material = %v", err)
		}
	})
	t.Run("tenant moved to a new key", func(t *testing.T) {
		srv := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}},
			lodetest.KMSKey{ID: key2, BackingKeys: [][32]byte{material(3)}})
		w := newWorld(t, srv, key1)
		old := w.seal(t, "app")
		if err := w.kr.RotateKMSKey("acme", srv.ARN(key2)); err != nil {
			t.Fatal(err)
		}
		if err := w.kr.Save(); err != nil {
			t.Fatal(err)
		}
		kr, err := manifest.LoadFileKeyring(w.kr.Path())
		if err != nil {
			t.Fatal(err)
		}
		kr.SetKMS(kms.Dial)
		e, _ := kr.KMSKeyOf("acme")
		if e.KeyID != srv.ARN(key2) || len(e.Previous) != 1 || e.Previous[0] != key1 {
			t.Errorf("after RotateKMSKey the entry is %+v; want key2 current, key1 previous", e)
		}
		w.kr = kr
		fresh := w.seal(t, "app")
		for name, b := range map[string][]byte{"old": old, "fresh": fresh} {
			if _, err := manifest.OpenImage(ctx, b, "acme", "app", kr); err != nil {
				t.Errorf("OpenImage(%s) after rotation = %v", name, err)
			}
		}
		// Retiring key1 retires what it wrapped, and only that.
		ret, err := manifest.LoadFileKeyring(w.kr.Path())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(ret.Path()); err != nil {
			t.Fatal(err)
		}
		nk, err := manifest.CreateFileKeyring(ret.Path())
		if err != nil {
			t.Fatal(err)
		}
		nk.AddKMSTenant("acme", manifest.KMSKey{KeyID: srv.ARN(key2), Region: srv.Region, Endpoint: srv.Endpoint})
		nk.SetKMS(kms.Dial)
		if _, err := manifest.OpenImage(ctx, old, "acme", "app", nk); !errors.Is(err, manifest.ErrWrongKey) || !strings.Contains(err.Error(), key1) {
			t.Errorf("OpenImage(old) once key1 is retired = %v; want ErrWrongKey naming key1", err)
		}
		if _, err := manifest.OpenImage(ctx, fresh, "acme", "app", nk); err != nil {
			t.Errorf("OpenImage(fresh) once key1 is retired = %v", err)
		}
	})
}

// TestKMSOutage: while KMS is down, an image already open keeps serving
// (its chunk keys are in memory) and new opens fail with ErrKMSUnavailable.
func TestKMSOutage(t *testing.T) {
	srv := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}})
	w := newWorld(t, srv, key1)
	ctx := context.Background()
	sealed := w.seal(t, "app")
	m, err := manifest.OpenImage(ctx, sealed, "acme", "app", w.kr)
	if err != nil {
		t.Fatal(err)
	}
	im, err := agent.NewImage("acme/app", m, agent.Config{Tiers: []agent.Tier{agent.NewOrigin(w.st, "r1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	srv.Stop()

	got := make([]byte, len(w.plain))
	if n, err := im.ReadAt(ctx, got, 0); err != nil || n != len(got) || !bytes.Equal(got, w.plain) {
		t.Errorf("ReadAt of the open image during the outage = %d, %v (equal %v)", n, err, bytes.Equal(got, w.plain))
	}
	_, err = manifest.OpenImage(ctx, sealed, "acme", "app", w.kr)
	if !errors.Is(err, manifest.ErrKMSUnavailable) || errors.Is(err, manifest.ErrWrongKey) || !strings.Contains(err.Error(), "acme/app") {
		t.Errorf("OpenImage during the outage = %v; want ErrKMSUnavailable naming the image", err)
	}
	if _, err := manifest.SealImage(ctx, w.m, "acme", "app2", w.kr); !errors.Is(err, manifest.ErrKMSUnavailable) {
		t.Errorf("SealImage during the outage = %v; want ErrKMSUnavailable", err)
	}
}

// signer records the credential scope of every request it forwards to a
// KMS server: "ACCESS_KEY/DATE/REGION/kms/aws4_request".
type signer struct {
	mu     sync.Mutex
	scopes []string
}

func (s *signer) last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.scopes) == 0 {
		return ""
	}
	return s.scopes[len(s.scopes)-1]
}

func recordingProxy(t *testing.T, target string) (string, *signer) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	s := &signer{}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if _, cred, ok := strings.Cut(auth, "Credential="); ok {
			cred, _, _ = strings.Cut(cred, ",")
			s.mu.Lock()
			s.scopes = append(s.scopes, cred)
			s.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, s
}

// TestKMSCredentials: KMS calls are signed with the credential chain the
// S3 store uses (the environment, then the shared credentials file in
// $AWS_PROFILE, then roles) and in the entry's region, else $AWS_REGION;
// with no keys anywhere a call fails at once with ErrNoCredentials.
func TestKMSCredentials(t *testing.T) {
	srv := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}})
	proxy, rec := recordingProxy(t, srv.Endpoint)
	credFile := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(credFile, []byte("[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n[work]\naws_access_key_id = AKIDWORK\naws_secret_access_key = s2\n"), 0o600)
	tests := []struct {
		name      string
		env       map[string]string
		region    string // the keyring entry's
		wantScope string // prefix before the date, and suffix after it
		wantErr   error
	}{
		{"environment keys, entry region", map[string]string{"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "x"}, "eu-west-3", "AKIDENV/ eu-west-3/kms/aws4_request", nil},
		{"shared file, AWS_PROFILE", map[string]string{"AWS_SHARED_CREDENTIALS_FILE": credFile, "AWS_PROFILE": "work"}, "eu-west-3", "AKIDWORK/ eu-west-3/kms/aws4_request", nil},
		{"shared file, default profile, AWS_REGION", map[string]string{"AWS_SHARED_CREDENTIALS_FILE": credFile, "AWS_REGION": "ap-south-1"}, "", "AKIDDEFAULT/ ap-south-1/kms/aws4_request", nil},
		{"environment wins over the file", map[string]string{"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "x", "AWS_SHARED_CREDENTIALS_FILE": credFile}, "", "AKIDENV/ us-east-1/kms/aws4_request", nil},
		{"endpoint from AWS_ENDPOINT_URL_KMS", map[string]string{"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL_KMS": "PROXY"}, "eu-west-3", "AKIDENV/ eu-west-3/kms/aws4_request", nil},
		{"no keys anywhere", map[string]string{"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(t.TempDir(), "none")}, "eu-west-3", "", kms.ErrNoCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY", "AWS_SECRET_KEY",
				"AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
				"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_KMS"} {
				t.Setenv(k, tt.env[k])
			}
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			entry := manifest.KMSKey{KeyID: key1, Region: tt.region, Endpoint: proxy}
			if tt.env["AWS_ENDPOINT_URL_KMS"] != "" {
				t.Setenv("AWS_ENDPOINT_URL_KMS", proxy)
				entry.Endpoint = "" // from the environment only
			}
			c, err := kms.New(context.Background(), entry, kms.Config{})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			plain, wrapped, err := c.GenerateDataKey(context.Background(), key1, map[string]string{"tenant": "acme"})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !errors.Is(err, manifest.ErrKMSUnavailable) {
					t.Fatalf("GenerateDataKey = %v; want %v (and ErrKMSUnavailable)", err, tt.wantErr)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("failing without keys took %v: it waited for something", d)
				}
				return
			}
			if err != nil || len(plain) != 32 || len(wrapped) == 0 {
				t.Fatalf("GenerateDataKey = %d, %d bytes, %v", len(plain), len(wrapped), err)
			}
			key, rest, _ := strings.Cut(tt.wantScope, " ")
			if got := rec.last(); !strings.HasPrefix(got, key) || !strings.HasSuffix(got, rest) {
				t.Errorf("signed with credential scope %q; want %s<date>/%s", got, key, rest)
			}
		})
	}
}

// TestKMSCredentialsFileRotation: a long-lived client (the agent's) signs
// with the shared credentials file's new keys as soon as the file is
// rewritten, without a restart (docs/operations.md, "Credentials").
func TestKMSCredentialsFileRotation(t *testing.T) {
	srv := lodetest.StartKMS(t, lodetest.KMSKey{ID: key1, BackingKeys: [][32]byte{material(1)}})
	proxy, rec := recordingProxy(t, srv.Endpoint)
	credFile := filepath.Join(t.TempDir(), "credentials")
	write := func(key string) {
		tmp := credFile + ".tmp"
		if err := os.WriteFile(tmp, []byte("[default]\naws_access_key_id = "+key+"\naws_secret_access_key = s\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, credFile); err != nil { // as a kubelet swaps a mounted Secret
			t.Fatal(err)
		}
	}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", credFile)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	write("AKIDBEFORE")
	c, err := kms.New(context.Background(), manifest.KMSKey{KeyID: key1, Region: "eu-west-3", Endpoint: proxy}, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"AKIDBEFORE", "AKIDAFTERROTATION"} {
		if key != "AKIDBEFORE" {
			write(key)
		}
		if _, _, err := c.GenerateDataKey(context.Background(), key1, map[string]string{"tenant": "acme"}); err != nil {
			t.Fatal(err)
		}
		if got := rec.last(); !strings.HasPrefix(got, key+"/") {
			t.Errorf("signed with %q; want the file's current key %s", got, key)
		}
	}
}
